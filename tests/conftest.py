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

from absl import flags  # noqa: E402

# grain's multiprocess prefetch reads an absl flag; outside absl.app.run the flags must be marked
# as parsed or it raises UnparsedFlagAccessError (specs/jax_ecosystem.md, gotcha G1).
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the read-only real datasets beside the checkout (skip when absent)."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
