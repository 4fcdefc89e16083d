"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere.

The tests run tiny shapes, so compiling dominates their time: XLA's CPU backend optimises less
(`--xla_backend_optimization_level=0`, unless XLA_FLAGS already sets it), which takes about a
third off the suite on 2 cores. The flag changes code generation, not the arithmetic.

The compiled steps are kept in JAX's persistent compilation cache: on CPU-2 the suite took
19:10 without it, 17:53 starting from an empty cache and 12:59 from a filled one.
"""

import os
import pathlib

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same steps (a run and its resume, the smoke configs): JAX's persistent
# compilation cache shares them between tests, the xdist workers, their subprocesses and later
# runs. A cached executable is the one the compiler would build, so results do not change.
# It lives in vosjax's cache root (`VOSJAX_DATA_DIR` moves it); that import loads no JAX.
from vosjax.data.synthetic import export  # noqa: E402

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(export.cache_root() / "jax_compilation_cache_tests")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))  # bytes, LRU-evicted

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
