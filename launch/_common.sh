# Sourced by the launch scripts (not run on its own): finds the checkout and the Python that
# runs maskjax.launch, where every command is built (one source of truth for all launchers).
if [[ -z "${MASKJAX_REPO:-}" ]]; then
  MASKJAX_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$MASKJAX_REPO/.venv/bin/python" ]]; then PYTHON="$MASKJAX_REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
# The checkout's maskjax wins over any installed copy, for the launcher and what it starts.
export PYTHONPATH="$MASKJAX_REPO${PYTHONPATH:+:$PYTHONPATH}"

# launch TARGET [args...]: hands over to `python -m maskjax.launch TARGET`; usage errors
# then name the calling script.
launch() {
  local target="$1"
  shift
  export MASKJAX_LAUNCH_PROG="${MASKJAX_LAUNCH_PROG:-$0}"
  exec "$PYTHON" -m maskjax.launch "$target" "$@"
}
