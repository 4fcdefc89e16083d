"""Reference cases computed by the authors' released code: discovery, loading, comparison.

The folder is `VOSJAX_REFERENCE_DIR` (default: ../shared/golden/reference beside the repository).
Every folder under it that holds a `case.json` is one case (`<method>/<case>/`); its weights are
rebuilt by the folder's own `seeded_weights.py` from the manifest and the seed, so any set of cases
made the same way (other seeds, frames and sizes) runs unchanged.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO.parent / "shared" / "golden" / "reference"


def reference_dir() -> pathlib.Path:
    """The folder of cases: $VOSJAX_REFERENCE_DIR, else ../shared/golden/reference."""
    return pathlib.Path(os.environ.get("VOSJAX_REFERENCE_DIR", DEFAULT_DIR)).resolve()


def discover(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Every case folder (one holding case.json) under `root`, sorted."""
    root = root or reference_dir()
    return sorted(p.parent for p in root.glob("*/*/case.json"))


@dataclasses.dataclass
class Case:
    """One reference case: case.json, the rebuilt torch state_dict, and the stored arrays."""

    folder: pathlib.Path
    meta: dict[str, Any]
    weights: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]

    @property
    def method(self) -> str:
        return self.folder.parent.name

    @property
    def name(self) -> str:
        return self.folder.name

    def input(self, key: str) -> np.ndarray:
        return self.arrays[f"in/{key}"]

    def output(self, key: str) -> np.ndarray:
        return self.arrays[f"out/{key}"]

    def input_keys(self) -> list[str]:
        return sorted(k[3:] for k in self.arrays if k.startswith("in/"))

    def output_keys(self) -> list[str]:
        return sorted(k[4:] for k in self.arrays if k.startswith("out/"))


def _seeded_weights_module(folder: pathlib.Path):
    """The `seeded_weights.py` nearest above `folder` (the case set's own)."""
    for parent in folder.parents:
        path = parent / "seeded_weights.py"
        if path.is_file():
            name = f"_seeded_weights_{abs(hash(str(path)))}"
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[name] = module
            return sys.modules[name]
    raise FileNotFoundError(f"no seeded_weights.py above {folder}")


def load(folder: pathlib.Path) -> Case:
    """A case folder -> Case (weights rebuilt from the manifest and seed; {} without manifest)."""
    folder = pathlib.Path(folder)
    meta = json.loads((folder / "case.json").read_text())
    weights = {}
    if meta.get("manifest"):
        weights = _seeded_weights_module(folder).seeded_state(meta["manifest"], meta["seed"])
    with np.load(folder / "arrays.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return Case(folder, meta, weights, arrays)


def assert_close(
    name: str, actual: Any, expected: np.ndarray, *, atol: float, rtol: float = 0.0
) -> None:
    """np.testing-style closeness with a message that says where and by how much it fails."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape}, reference {expected.shape}")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    diff = np.abs(a - e)
    bad = diff > atol + rtol * np.abs(e)
    if bad.any():
        where = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} elements outside atol={atol} rtol={rtol}; "
            f"max |diff| {diff.max():.3g} at {tuple(int(i) for i in where)} "
            f"(vosjax {a[where]:.6g}, reference {e[where]:.6g}); reference scale "
            f"{np.abs(e).max():.3g}"
        )
