"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
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
