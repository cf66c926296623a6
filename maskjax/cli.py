"""The ``maskjax`` console script: ``maskjax train ...``, data preparation, conversion, evaluation."""

from __future__ import annotations

import sys

USAGE = """usage: maskjax <command> [options]

commands:
  train            pre-train from a config (maskjax train --config configs/mae/default.py)
  convert-images   convert an ImageFolder directory or tar into ArrayRecord shards
  train-tokenizer  train a WordPiece vocab.txt on text files (maskjax train-tokenizer -h)
  tokenize         tokenize and pack a text corpus into ArrayRecord blocks once (maskjax tokenize -h)
  tokenize-images  encode an image dataset once with a trained VQ tokenizer into ArrayRecord token ids (maskjax tokenize-images -h)
  predecode-video  decode video files once into ArrayRecord clips of JPEG frames (maskjax predecode-video -h)
  make-moving-cifar  write synthetic moving-CIFAR-10 video clips as MP4 files (maskjax make-moving-cifar -h)
  convert          checkpoints: official MAE / Hugging Face <-> maskjax (maskjax convert -h)
  eval             run evaluators on a checkpoint (maskjax eval --config ... --workdir ...)
  plot             training curves of a run as a PNG (maskjax plot WORKDIR)
  fid-stats        Inception statistics of a dataset split or image set, FID to a reference (needs the fid extra)
  repro            run a reproduction table into docs/results (maskjax repro --list)
  bench            time the train step: compile, step time, throughput, FLOPs, MFU, data wait (maskjax bench -h)
  fitcheck         compile the train step ahead of time for a target mesh / TPU topology: memory and fit
  launch           multi-process / TPU pod / xpk / SLURM launch commands (maskjax launch -h; --dry-run)
"""


COMMON = """
Every command takes -h. Those that run a config (train, eval, bench, fitcheck, repro) take
--config FILE[:ARG] and --config.FIELD=VALUE overrides. An error is one line and exit status 2;
--debug shows its traceback.
"""


def _commands() -> dict:
    """Subcommand name -> ``"module:function"`` taking the remaining argv, returning an exit status."""
    return {
        "train": "maskjax.train.cli:train_main",
        "convert-images": "maskjax.data.convert:main",
        "train-tokenizer": "maskjax.data.text.convert:main_train_tokenizer",
        "tokenize": "maskjax.data.text.convert:main",
        "tokenize-images": "maskjax.methods.vqgan:tokenize_images_main",
        "predecode-video": "maskjax.data.video.predecode:main",
        "make-moving-cifar": "maskjax.data.video.moving_cifar:main",
        "convert": "maskjax.convert.cli:main",
        "eval": "maskjax.eval.cli:eval_main",
        "plot": "maskjax.eval.cli:plot_main",
        "fid-stats": "maskjax.eval.fid:main",
        "repro": "maskjax.repro:main",
        "bench": "maskjax.perf.bench:main",
        "fitcheck": "maskjax.perf.fitcheck:main",
        "launch": "maskjax.launch:main",
    }


def main(argv: list[str] | None = None) -> int:
    """Dispatches to a subcommand; a user error is one line on stderr and exit status 2."""
    import importlib

    from maskjax.errors import pop_debug_flag, run_command

    argv = list(sys.argv if argv is None else argv)
    argv, debug = pop_debug_flag(argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE + COMMON)
        return 0 if len(argv) >= 2 else 2
    command, rest = argv[1], argv[2:]
    commands = _commands()
    if command not in commands:
        import difflib

        close = difflib.get_close_matches(command, commands, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"maskjax: unknown command {command!r}{hint} (maskjax -h lists the commands)", file=sys.stderr)
        return 2
    if command in ("train", "eval", "bench", "repro"):
        # Before anything starts JAX's backends (docs/performance.md, "Page faults").
        from maskjax.host_memory import tune_malloc

        tune_malloc()
    if command in ("repro", "eval"):  # train and bench do this themselves (also under python -m)
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    module, _, function = commands[command].partition(":")
    entry = getattr(importlib.import_module(module), function)
    return run_command(f"maskjax {command}", entry, rest, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
