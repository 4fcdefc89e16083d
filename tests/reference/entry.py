"""The shape of one entry in a method's CASES table (tests/reference/<method>_cases.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.reference import cases

Outputs = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CaseEntry:
    """prepare(case) -> run; run() -> outputs (numpy, computed by vosjax); check(case, outputs).

    `prepare` does the one-off work (weight conversion, building and jitting the computation) so
    that experiments/bench_reference.py can time `run()` alone against the case's
    `reference_cpu_seconds`. `run()` must block until its results are computed (np.asarray).
    """

    prepare: Callable[[cases.Case], Callable[[], Outputs]]
    check: Callable[[cases.Case, Outputs], None]
    # Which `reference_cpu_seconds` entry of case.json `run()` corresponds to (None: the whole).
    timing_key: str | None = None


def as_numpy(tree: Any) -> Any:
    """jax arrays -> numpy, recursively for dicts/lists (blocks until computed)."""
    if isinstance(tree, dict):
        return {k: as_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(as_numpy(v) for v in tree)
    return np.asarray(tree)
