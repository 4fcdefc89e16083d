"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere.

The tests run tiny shapes, so compiling dominates their time: XLA's CPU backend optimises less
(`--xla_backend_optimization_level=0`, unless XLA_FLAGS already sets it), which takes about a
third off the suite on 2 cores. The flag changes code generation, not the arithmetic.
"""

import os
import pathlib

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
DAVIS2016 = SHARED / "data" / "DAVIS2016"
GOLDEN = SHARED / "golden"


@pytest.fixture(scope="session")
def davis2016_root() -> pathlib.Path:
    """The real DAVIS-2016 sequences in ../shared/data."""
    if not DAVIS2016.is_dir():
        pytest.fail(f"expected the shared data at {DAVIS2016}")
    return DAVIS2016


@pytest.fixture(scope="session")
def golden_root() -> pathlib.Path:
    """The golden prediction sets in ../shared/golden."""
    if not GOLDEN.is_dir():
        pytest.fail(f"expected the golden sets at {GOLDEN}")
    return GOLDEN
