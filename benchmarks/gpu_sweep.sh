#!/usr/bin/env bash
# Runs `maskjax bench` once per variant, each in its own process (XLA flags are per process), and
# writes each one's table and kernel table to OUTDIR/LABEL.md (its JSON and log go to /tmp/bench_LABEL.*).
#
# Usage: benchmarks/gpu_sweep.sh OUTDIR CONFIG "LABEL|BATCH|XLA_FLAGS|OVERRIDE OVERRIDE ...[|ENV=VALUE ...]" ...
#   e.g. benchmarks/gpu_sweep.sh out configs/mae/vit_l16_in1k.py:smoke \
#          "base|128||compute_dtype=bfloat16" "cudnn|256||compute_dtype=bfloat16 model.attention_impl=cudnn"
# Env: STEPS (default 20), WARMUP (3), PROFILE_STEPS (3; 0 = no trace), EXTRA (more bench args).
set -u
out=$1; config=$2; shift 2
mkdir -p "$out"
for variant in "$@"; do
  IFS='|' read -r label batch flags overrides envs <<<"$variant"
  args=(--config "$config" --batch "$batch" --synthetic-data --steps "${STEPS:-20}" --warmup "${WARMUP:-3}"
        --json "/tmp/bench_$label.json")
  for o in $overrides; do args+=("--config.$o"); done
  if [ "${PROFILE_STEPS:-3}" -gt 0 ]; then
    args+=(--profile "/tmp/trace_$label" --profile-steps "${PROFILE_STEPS:-3}")
  fi
  echo "=== $label: batch $batch, XLA_FLAGS='$flags', overrides: $overrides, env: ${envs:-}"
  env ${envs:-} XLA_FLAGS="$flags" python3 -m maskjax.perf.bench "${args[@]}" ${EXTRA:-} >"$out/$label.md" 2>"/tmp/bench_$label.err" \
    || { echo "failed:"; tail -5 "/tmp/bench_$label.err"; }
  grep -m1 -A2 '^| config' "$out/$label.md" | tail -1
done
