"""Safe weight loading: weights-only unpickling, optional dependencies, no torch in the core."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from maskjax.convert import UnsafeCheckpointError, load_state_dict
from maskjax.convert.torch_io import require_safetensors, require_torch, save_safetensors


class _Payload:
    """Unpickling this would create a file: the classic malicious-checkpoint pattern, made harmless."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*weights_only=True"):
        load_state_dict(path)
    assert not os.path.exists(marker), "the payload ran"


def test_official_checkpoint_layout_loads(tmp_path):
    """{"model": sd, "args": Namespace, "epoch": n} as main_pretrain.py saves; DDP prefix; bf16."""
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "checkpoint-799.pth")
    sd = {"module.cls_token": torch.ones(1, 1, 4, dtype=torch.bfloat16), "module.pos_embed": torch.zeros(1, 5, 4)}
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-3), "epoch": 799}, path)
    out = load_state_dict(path)
    assert sorted(out) == ["cls_token", "pos_embed"]
    assert out["cls_token"].dtype == np.float32 and out["cls_token"].shape == (1, 1, 4)


def test_safetensors_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    sd = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = load_state_dict(save_safetensors(sd, str(tmp_path / "model.safetensors")))
    np.testing.assert_array_equal(out["a.weight"], sd["a.weight"])
    assert load_state_dict(str(tmp_path)).keys() == sd.keys()  # a folder holding model.safetensors


def test_missing_optional_dependencies_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'maskjax\[convert\]'"):
        require_torch()
    (tmp_path / "x.pth").write_bytes(b"")
    with pytest.raises(ImportError, match=r"needs PyTorch.*pip install 'maskjax\[convert\]'"):
        load_state_dict(str(tmp_path / "x.pth"))
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"safetensors.*pip install 'maskjax\[convert\]'"):
        require_safetensors()


def test_library_imports_without_torch_or_transformers():
    code = ("import sys; import maskjax.convert, maskjax.convert.cli, maskjax.models.classifier, maskjax.methods.mae; "
            "bad = [m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
