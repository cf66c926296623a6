"""Safe reading and writing of PyTorch-world weight files (no arbitrary unpickling, ever).

- ``.safetensors``: read with safetensors' numpy API (no torch needed).
- ``.pth`` / ``.pt`` / ``.bin``: ``torch.load(..., map_location="cpu", weights_only=True)``. PyTorch's
  weights-only unpickler builds tensors and plain containers only; a file that needs any other
  class is refused with :class:`UnsafeCheckpointError`. One class is allow-listed:
  ``argparse.Namespace``, which MAE's ``main_pretrain.py`` / ``main_finetune.py`` store as
  ``"args"`` in every checkpoint they write; rebuilding it sets attributes and runs no code.

torch and safetensors are optional (``pip install 'maskjax[convert]'``) and imported lazily, so
the core library never needs them.
"""

from __future__ import annotations

import argparse
import os
import pickle
from typing import Mapping

import numpy as np

from maskjax.convert.common import ConversionError

INSTALL_HINT = "pip install 'maskjax[convert]'"
_NESTED_KEYS = ("model", "state_dict", "model_state", "module")


class UnsafeCheckpointError(ConversionError):
    """The file needs arbitrary unpickling (non-tensor objects); it was not loaded."""


def require_torch():
    """Imports torch, or raises an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading or writing PyTorch checkpoints needs PyTorch, which is an optional "
                          f"dependency of maskjax: {INSTALL_HINT}") from e
    return torch


def require_safetensors():
    """Imports ``safetensors.numpy``, or raises an ImportError that says how to install it."""
    try:
        import safetensors.numpy as st
    except ImportError as e:
        raise ImportError(f"reading or writing .safetensors files needs the safetensors package, an "
                          f"optional dependency of maskjax: {INSTALL_HINT}") from e
    return st


def _to_numpy(value, key: str) -> np.ndarray:
    torch = require_torch()
    if not isinstance(value, torch.Tensor):
        raise ConversionError(f"{key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float32:
        value = value.float()  # numpy has no bfloat16; maskjax parameters are float32 anyway
    return value.numpy()


def _unwrap(obj, path: str) -> Mapping:
    torch = require_torch()
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for name in _NESTED_KEYS:  # official MAE: {"model": state_dict, ...}
        inner = obj.get(name)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    raise ConversionError(f"{path} is not a state dict and has none under {list(_NESTED_KEYS)}; "
                          f"top-level keys: {sorted(map(str, obj))[:10]}")


def _strip_prefix(sd: dict[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def find_weights_file(path: str) -> str:
    """The weights file of ``path``: itself, or ``model.safetensors`` / ``pytorch_model.bin`` in a folder."""
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        if any(n.endswith(".index.json") for n in os.listdir(path)):
            raise ConversionError(f"{path} holds a sharded checkpoint; maskjax reads single-file "
                                  f"checkpoints (model.safetensors or pytorch_model.bin)")
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _unreadable(path: str, what: str, error: BaseException) -> ConversionError:
    """The one-line error for a weights file its reader cannot parse (empty, truncated, not that format)."""
    lines = str(error).strip().splitlines()
    # First sentence only: torch's zip-reader message goes on for several more about corruption.
    said = f"{type(error).__name__}: {lines[0].split('. ')[0][:200]}" if lines else type(error).__name__
    return ConversionError(f"cannot read {path} ({os.path.getsize(path)} bytes) as {what}: the file is "
                           f"truncated, corrupt or not that format ({said}); download or save it again")


def _refuse_empty(path: str) -> None:
    # Both readers fail on an empty file with a message that does not say so (EOFError, "header
    # too small"); an interrupted download is the usual cause.
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ConversionError(f"{path} is empty (0 bytes); download or save it again")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict as ``{key: float32 numpy array}`` from a file or an HF model folder.

    Unwraps ``{"model": state_dict}`` (official MAE) and DDP's ``module.`` prefix. Raises
    :class:`UnsafeCheckpointError` for pickles that need more than tensors and containers, and
    :class:`~maskjax.convert.common.ConversionError` naming the file for an empty, truncated or
    otherwise unreadable one (instead of the reader's traceback).
    """
    path = find_weights_file(path)
    if path.endswith(".safetensors"):
        st = require_safetensors()
        _refuse_empty(path)
        try:
            sd = st.load_file(path)
        except (TypeError, ValueError):  # e.g. bfloat16, which numpy cannot hold: go through torch
            import safetensors.torch

            require_torch()
            try:
                sd = {k: _to_numpy(v, k) for k, v in safetensors.torch.load_file(path).items()}
            except ConversionError:
                raise
            except Exception as e:  # noqa: BLE001 - safetensors' errors carry no common base
                raise _unreadable(path, "a safetensors file", e) from e
        except Exception as e:  # noqa: BLE001 - SafetensorError (bad header, truncated data), OSError
            raise _unreadable(path, "a safetensors file", e) from e
        return _strip_prefix({k: np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
                              for k, v in sd.items()})
    torch = require_torch()  # first: a missing dependency is the problem to report, whatever the file
    _refuse_empty(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():  # a broken pickle stream, not a refused class
            raise _unreadable(path, "a PyTorch checkpoint", e) from e
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains objects other than tensors and plain containers, "
            f"and unpickling them could run arbitrary code. maskjax only loads with "
            f"torch.load(weights_only=True). If you trust the file, re-save just its state dict "
            f"yourself (torch.save(torch.load(path, weights_only=False)['model'], 'clean.pth')), or "
            f"use a .safetensors file. PyTorch said: {str(e).splitlines()[-1][:300]}") from e
    except Exception as e:  # noqa: BLE001 - EOFError, RuntimeError (zip reader), KeyError/IndexError (garbage)
        raise _unreadable(path, "a PyTorch checkpoint", e) from e
    sd = _unwrap(obj, path)
    return _strip_prefix({str(k): _to_numpy(v, str(k)) for k, v in sd.items()})


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str) -> str:
    """Writes ``{key: array}`` as safetensors with the ``format: pt`` metadata transformers expects."""
    st = require_safetensors()
    st.save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path, metadata={"format": "pt"})
    return path


def save_torch(state_dict: Mapping[str, np.ndarray], path: str, *, nest: str | None = None) -> str:
    """Writes ``{key: array}`` with ``torch.save`` (optionally nested as ``{nest: state_dict}``)."""
    torch = require_torch()
    # torch.from_numpy needs a writable array; np.require copies only arrays that are not.
    sd = {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in state_dict.items()}
    torch.save({nest: sd} if nest else sd, path)
    return path
