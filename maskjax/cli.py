"""The ``maskjax`` console script: ``maskjax train ...``, data preparation, conversion, evaluation."""

from __future__ import annotations

import sys

USAGE = """usage: maskjax <command> [options]

commands:
  train            pre-train from a config (maskjax train --config configs/mae/default.py)
  convert-images   convert an ImageFolder directory or tar into ArrayRecord shards
  train-tokenizer  train a WordPiece vocab.txt on text files (maskjax train-tokenizer -h)
  tokenize         tokenize and pack a text corpus into ArrayRecord blocks once (maskjax tokenize -h)
  predecode-video  decode video files once into ArrayRecord clips of JPEG frames (maskjax predecode-video -h)
  make-moving-cifar  write synthetic moving-CIFAR-10 video clips as MP4 files (maskjax make-moving-cifar -h)
  convert          checkpoints: official MAE / Hugging Face <-> maskjax (maskjax convert -h)
  eval             run evaluators on a checkpoint (maskjax eval --config ... --workdir ...)
  plot             training curves of a run as a PNG (maskjax plot WORKDIR)
  repro            run a reproduction table into docs/results (maskjax repro --list)
  bench            time the train step: compile, step time, throughput, FLOPs, MFU, data wait (maskjax bench -h)
  fitcheck         compile the train step ahead of time for a target mesh / TPU topology: memory and fit
  launch           multi-process / TPU pod / xpk / SLURM launch commands (maskjax launch -h; --dry-run)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatches to a subcommand."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(argv) >= 2 else 2
    command, rest = argv[1], argv[2:]
    if command in ("train", "eval", "bench", "repro"):
        # Before anything starts JAX's backends (docs/performance.md, "Page faults").
        from maskjax.host_memory import tune_malloc

        tune_malloc()
    if command == "train":
        from maskjax.train.cli import run

        run([f"{argv[0]} train"] + rest)
        return 0
    if command == "convert-images":
        from maskjax.data.convert import main as convert_main

        return convert_main(rest)
    if command == "train-tokenizer":
        from maskjax.data.text.convert import main_train_tokenizer

        return main_train_tokenizer(rest)
    if command == "tokenize":
        from maskjax.data.text.convert import main as tokenize_main

        return tokenize_main(rest)
    if command == "predecode-video":
        from maskjax.data.video.predecode import main as predecode_main

        return predecode_main(rest)
    if command == "make-moving-cifar":
        from maskjax.data.video.moving_cifar import main as moving_cifar_main

        return moving_cifar_main(rest)
    if command == "convert":
        from maskjax.convert.cli import main as convert_checkpoints

        return convert_checkpoints(rest)
    if command == "eval":
        from maskjax.eval.cli import eval_main

        return eval_main(rest)
    if command == "repro":
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
        from maskjax.repro import main as repro_main

        return repro_main(rest)
    if command == "bench":
        from maskjax.perf.bench import main as bench_main

        return bench_main(rest)
    if command == "fitcheck":
        from maskjax.perf.fitcheck import main as fitcheck_main

        return fitcheck_main(rest)
    if command == "launch":
        from maskjax.launch import main as launch_main

        return launch_main(rest)
    if command == "plot":
        from maskjax.eval.cli import plot_main

        return plot_main(rest)
    print(f"maskjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
