"""Test helpers for the audio pipeline: torchaudio's Kaldi fbank without installing torchaudio.

torchaudio 2.11's C extension does not load beside the installed torch, but
``torchaudio/compliance/kaldi.py`` is pure Python over torch; it only touches the package for
``torchaudio.functional.create_dct`` (MFCC, unused here). `load_torchaudio_kaldi` reads that one
file out of the wheel (a zip) and executes it with a stub ``torchaudio`` package.

The wheel is looked up in ``$MASKJAX_WHEELS`` and ``<repo>/.cache/wheels`` (CI fills the latter
with ``python3 -m pip download --no-deps -d .cache/wheels torchaudio==2.11.0``).
"""

from __future__ import annotations

import glob
import io
import os
import pathlib
import sys
import types
import wave
import zipfile

import numpy as np

from maskjax.config.datasets import fsdd_tar

REPO = pathlib.Path(__file__).resolve().parents[1]
FSDD_TAR = fsdd_tar()
TORCHAUDIO_VERSION = "2.11.0"
_KALDI_MEMBER = "torchaudio/compliance/kaldi.py"


def torchaudio_wheel() -> str | None:
    """Path of a torchaudio wheel in ``$MASKJAX_WHEELS`` or ``.cache/wheels``, else None."""
    dirs = [os.environ.get("MASKJAX_WHEELS"), str(REPO / ".cache" / "wheels")]
    for d in dirs:
        if d:
            found = sorted(glob.glob(os.path.join(d, f"torchaudio-{TORCHAUDIO_VERSION}-*.whl")))
            found = found or sorted(glob.glob(os.path.join(d, "torchaudio-*.whl")))
            if found:
                return found[-1]
    return None


def load_torchaudio_kaldi():
    """torchaudio's ``compliance.kaldi`` module, or ``pytest.skip`` with the reason it is absent."""
    import pytest

    torch = pytest.importorskip("torch", reason="torch is needed to run torchaudio's kaldi.py")
    wheel = torchaudio_wheel()
    if wheel is None:
        pytest.skip(f"no torchaudio wheel in $MASKJAX_WHEELS or {REPO / '.cache' / 'wheels'}; run "
                    f"`python3 -m pip download --no-deps -d .cache/wheels torchaudio=={TORCHAUDIO_VERSION}`")
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(_KALDI_MEMBER).decode("utf-8")
    # A private stub package: never shadow a real torchaudio for the rest of the session.
    saved = sys.modules.get("torchaudio")
    stub = types.ModuleType("torchaudio")
    stub.functional = types.SimpleNamespace(create_dct=_no_mfcc)
    module = types.ModuleType("torchaudio_compliance_kaldi")
    module.__file__ = f"{wheel}/{_KALDI_MEMBER}"
    sys.modules["torchaudio"] = stub
    try:
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    finally:
        if saved is None:
            sys.modules.pop("torchaudio", None)
        else:
            sys.modules["torchaudio"] = saved
    module.torch = torch
    return module


def _no_mfcc(*args, **kwargs):
    raise NotImplementedError("the torchaudio stub has no create_dct (MFCC is not tested)")


def torchaudio_fbank(kaldi, waveform: np.ndarray, sample_rate: int, num_mel_bins: int = 128) -> np.ndarray:
    """AudioMAE's exact fbank call on a float32 mono waveform (after its mean removal)."""
    import torch

    w = torch.from_numpy(np.asarray(waveform, np.float32))[None]
    w = w - w.mean()
    out = kaldi.fbank(w, htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
                      num_mel_bins=num_mel_bins, dither=0.0, frame_shift=10)
    return out.numpy()


def write_wav(path, samples: np.ndarray, sample_rate: int, sampwidth: int = 2) -> None:
    """Writes integer PCM ``samples`` ([n] or [n, channels]) with the stdlib ``wave`` module."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[:, None]
    channels = samples.shape[1]
    if sampwidth == 1:
        raw = samples.astype(np.uint8).tobytes()
    elif sampwidth == 3:
        v = samples.astype("<i4").reshape(-1)
        raw = np.stack([(v >> 0) & 255, (v >> 8) & 255, (v >> 16) & 255], axis=1).astype(np.uint8).tobytes()
    else:
        raw = samples.astype(f"<i{sampwidth}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sampwidth)
        w.setframerate(sample_rate)
        w.writeframes(raw)


def wav_bytes(samples: np.ndarray, sample_rate: int, sampwidth: int = 2) -> bytes:
    """Like `write_wav` but returns the file's bytes."""
    buf = io.BytesIO()
    samples = np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[:, None]
    with wave.open(buf, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(sampwidth)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype(f"<i{sampwidth}").tobytes())
    return buf.getvalue()
