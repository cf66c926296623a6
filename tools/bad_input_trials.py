"""Bad-input trials: run ``maskjax`` commands with wrong inputs and classify what each one printed.

  .venv/bin/python tools/bad_input_trials.py [--only SUBSTRING] [--json out.json]

Every case is a real subprocess (``python -m maskjax.cli ...``) on the tiny smoke config, with the
bad input put together in a temporary folder (empty data folder, a text file named ``.tar``,
corrupt JPEGs, a truncated ``.pth``, ...). A case's outcome is one of:

- ``one line``: exit status 2 and a single non-empty stderr line, no traceback (what we want);
- ``message``: exit status 2, no traceback, a message of several lines (argparse's usage line
  plus its error, or a config with several problems listed one per line);
- ``traceback``: a Python traceback reached the user;
- ``accepted``: exit status 0 although the input was wrong;
- ``other``: anything else (another status, several lines).

Prints a Markdown table (case, outcome, status, seconds, the message) and the count per outcome;
docs/reliability.md quotes it.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO_ROOT, "configs", "mae", "default.py") + ":smoke"
TINY = ["--config.model.variant=mu/4", "--config.data.image_size=16", "--config.model.decoder_width=32",
        "--config.model.decoder_depth=1", "--config.model.decoder_heads=2", "--config.global_batch=16",
        "--config.total_steps=2", "--config.progress=False"]


def _jpeg(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path, format="JPEG")


def build_inputs(root: str) -> dict[str, str]:
    """Creates the bad inputs under ``root``; returns name -> path."""
    paths = {}
    paths["empty_dir"] = os.path.join(root, "empty")
    os.makedirs(os.path.join(paths["empty_dir"], "train"))
    paths["text_tar"] = os.path.join(root, "notes.tar")
    with open(paths["text_tar"], "w") as f:
        f.write("this is a text file, not a tar archive\n" * 20)
    # 40 good images in 2 classes plus 10 bad ones (zero bytes, truncated, not an image): 20%.
    mixed = os.path.join(root, "mixed")
    for c in ("a", "b"):
        os.makedirs(os.path.join(mixed, "train", c))
        for i in range(20):
            _jpeg(os.path.join(mixed, "train", c, f"{i}.jpg"), seed=i + (100 if c == "b" else 0))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, format="JPEG")
    for i in range(10):
        bad = os.path.join(mixed, "train", "a", f"bad{i}.jpg")
        with open(bad, "wb") as f:
            f.write(b"" if i % 3 == 0 else buf.getvalue()[:40] if i % 3 == 1 else b"<html>not an image</html>")
    paths["mixed"] = mixed
    paths["file_workdir"] = os.path.join(root, "a_file")
    with open(paths["file_workdir"], "w") as f:
        f.write("x")
    paths["empty_pth"] = os.path.join(root, "empty.pth")
    open(paths["empty_pth"], "wb").close()
    paths["truncated_pth"] = os.path.join(root, "truncated.pth")
    with open(paths["truncated_pth"], "wb") as f:
        f.write(b"PK\x03\x04" + os.urandom(2000))
    return paths


def cases(p: dict[str, str], root: str) -> list[tuple[str, list[str]]]:
    """(name, maskjax argv) of every trial."""
    wd = os.path.join(root, "wd")
    train = ["train", "--config", SMOKE, "--skip_evals", *TINY]
    return [
        ("train: total_steps=0", [*train, "--workdir", wd + "0", "--config.total_steps=0"]),
        ("train: total_steps=-5", [*train, "--workdir", wd + "1", "--config.total_steps=-5"]),
        ("train: stop_at_step=-1", [*train, "--workdir", wd + "2", "--stop_at_step=-1"]),
        ("train: base_lr=-1", [*train, "--workdir", wd + "3", "--config.optim.base_lr=-1"]),
        ("train: base_lr=nan", [*train, "--workdir", wd + "4", "--config.optim.base_lr=nan"]),
        ("train: every_steps=0", [*train, "--workdir", wd + "5", "--config.checkpoint.every_steps=0"]),
        ("train: max_to_keep=0", [*train, "--workdir", wd + "6", "--config.checkpoint.max_to_keep=0"]),
        ("train: global_batch=0", [*train, "--workdir", wd + "7", "--config.global_batch=0"]),
        ("train: log_every_steps=0", [*train, "--workdir", wd + "8", "--config.log_every_steps=0"]),
        ("train: masking.ratio=0.999", [*train, "--workdir", wd + "9", "--config.masking.ratio=0.999"]),
        ("train: image_size=0", [*train, "--workdir", wd + "10", "--config.data.image_size=0"]),
        ("train: image_size=30 (patch 4)", [*train, "--workdir", wd + "11", "--config.data.image_size=30"]),
        ("train: unknown augment", [*train, "--workdir", wd + "12", "--config.data.augment=bogus"]),
        ("train: empty data folder", [*train, "--workdir", wd + "13", f"--config.data.path={p['empty_dir']}"]),
        ("train: missing data path", [*train, "--workdir", wd + "14", f"--config.data.path={root}/no_such"]),
        ("train: text file as tar", [*train, "--workdir", wd + "15", f"--config.data.path={p['text_tar']}"]),
        ("train: 20% corrupt images", [*train, "--workdir", wd + "16", f"--config.data.path={p['mixed']}",
                                       "--config.data.eval_path=None", "--config.total_steps=8"]),
        ("train: missing config file", ["train", "--config", "configs/mae/no_such.py"]),
        ("train: bad :arg", ["train", "--config", "configs/mae/default.py:smok"]),
        ("train: config typo", [*train, "--workdir", wd + "17", "--config.optim.base_lrr=1e-3"]),
        ("train: wrong value type", [*train, "--workdir", wd + "18", "--config.total_steps=ten"]),
        ("train: workdir is a file", [*train, "--workdir", p["file_workdir"]]),
        ("train: unknown flag", [*train, "--workdir", wd + "19", "--no_such_flag"]),
        ("eval: missing workdir", ["eval", "--config", SMOKE, "--workdir", os.path.join(root, "no_run")]),
        ("eval: workdir without checkpoints", ["eval", "--config", SMOKE, "--workdir", root]),
        ("bench: config typo", ["bench", "--config", SMOKE, "--config.modle.variant=mu/4"]),
        ("fitcheck: missing config", ["fitcheck", "--config", "configs/mae/no_such.py"]),
        ("convert: empty .pth", ["convert", "mae-official", p["empty_pth"], os.path.join(root, "out1")]),
        ("convert: truncated .pth", ["convert", "mae-official", p["truncated_pth"], os.path.join(root, "out2")]),
        ("repro: unknown table", ["repro", "no_such_table"]),
        ("unknown command", ["trian"]),
    ]


def classify(status: int, err: str) -> str:
    """The outcome of one case (see the module docstring)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "W0", "I0"))]
    if "Traceback" in err:
        return "traceback"
    if status == 0:
        return "accepted"
    if status == 2 and len(lines) == 1:
        return "one line"
    if status == 2:
        return "message"
    return "other"


def main() -> None:
    """Runs the cases; prints the table and the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bad_inputs_")
    paths = build_inputs(root)
    env = dict(os.environ, JAX_PLATFORMS="cpu", MASKJAX_PROGRESS="0")
    rows = []
    for name, argv in cases(paths, root):
        if args.only not in name:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "maskjax.cli", *argv], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        outcome = classify(proc.returncode, proc.stderr)
        message = " / ".join(line for line in proc.stderr.strip().splitlines()[-2:])
        rows.append({"case": name, "outcome": outcome, "status": proc.returncode,
                     "seconds": round(time.perf_counter() - t0, 1), "message": message[:300]})
        print(json.dumps(rows[-1]), flush=True)
    created = os.path.exists(os.path.join(root, "no_run"))
    print(f"\n`eval` on a missing workdir created it: {created}\n")
    print("| case | outcome | status | s | message |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['outcome']} | {r['status']} | {r['seconds']} | "
              f"{r['message'].replace('|', '/')} |")
    counts = collections.Counter(r["outcome"] for r in rows)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" (of {len(rows)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
