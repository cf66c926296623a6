"""Tiny text configs for method and trainer tests: a WikiText-2 slice, a 1k WordPiece vocab."""

from __future__ import annotations

import pathlib

from maskjax.config import apply_overrides, text_base_config

_SLICE_LINES = 1500


def wikitext_slice(shared_data: pathlib.Path, out_dir: pathlib.Path, lines: int = _SLICE_LINES,
                   name: str = "valid.txt") -> pathlib.Path:
    """Writes the first ``lines`` lines of WikiText-2 ``name`` into ``out_dir`` (tests must not write ../shared)."""
    src = shared_data / "wikitext2" / name
    out = out_dir / f"slice_{name}"
    if not out.exists():
        with open(src, encoding="utf-8") as f:
            text = "".join(line for _, line in zip(range(lines), f))
        out.write_text(text, encoding="utf-8")
    return out


def tiny_text_config(train_file, eval_file=None, *, cache_dir=None, **overrides):
    """A micro BERT (2 layers, 32 wide) on 32-token blocks with a 1,024-token vocabulary."""
    config = text_base_config()
    base = {
        "model.variant": "mu", "model.vocab_size": 1024, "model.max_positions": 32,
        "data.kind": "text", "data.doc_format": "wikitext", "data.path": str(train_file),
        "data.eval_path": str(eval_file or train_file), "data.vocab_size": 1024, "data.seq_len": 32,
        "masking.max_predictions": 8, "global_batch": 8, "total_steps": 4, "optim.warmup_steps": 1,
        "optim.base_lr": 1e-3, "log_every_steps": 1, "progress": False, "checkpoint.every_steps": 1000,
    }
    if cache_dir is not None:
        base["data.cache_dir"] = str(cache_dir)
    base.update(overrides)
    apply_overrides(config, base)
    return config
