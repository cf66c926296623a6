"""Test-session setup: 8 simulated CPU devices and parsed absl flags.

XLA_FLAGS must be set before jax initialises its backends, so this runs at import time of the
conftest (pytest imports it before any test module).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

# A persistent compilation cache shared by all tests and the subprocesses they start: many
# tests compile the same tiny programs, and CPU compilation dominates their run time.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from absl import flags  # noqa: E402

# grain's multiprocess prefetch reads an absl flag; outside absl.app.run the flags must be marked
# as parsed or it raises UnparsedFlagAccessError (specs/jax_ecosystem.md, gotcha G1).
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
from maskjax.config.datasets import data_root  # noqa: E402

SHARED_DATA = data_root()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the read-only real datasets beside the checkout (skip when absent)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"the datasets folder {SHARED_DATA} is not present (set MASKJAX_DATA_DIR)")
    return SHARED_DATA


def tiny_config(**overrides):
    """The default recipe's smoke run with a micro model: seconds to compile and train on CPU."""
    from maskjax.config import apply_overrides, load_config

    config = load_config(str(REPO_ROOT / "configs" / "mae" / "default.py") + ":smoke")
    base = {
        "model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 32,
        "model.decoder_depth": 1, "model.decoder_heads": 2, "global_batch": 16,
        "optim.base_lr": 1e-2, "progress": False,
    }
    base.update(overrides)
    apply_overrides(config, base)
    return config


TINY_FLAGS = [
    "--config.model.variant=mu/4", "--config.data.image_size=16", "--config.model.decoder_width=32",
    "--config.model.decoder_depth=1", "--config.model.decoder_heads=2", "--config.global_batch=16",
    "--config.optim.base_lr=0.01",
]


@pytest.fixture
def tiny():
    """Factory fixture: ``tiny(**overrides)`` returns a tiny MAE config."""
    return tiny_config
