"""vosjax against the authors' released code, side by side, on the reference cases.

  PYTHONPATH=. python experiments/bench_reference.py [--repeats=3] [--cases=ino/*,shls/memory]
      [--check=true]

For every case folder under $VOSJAX_REFERENCE_DIR (default ../shared/golden/reference; see
tests/reference/cases.py) it takes the case's entry in the CASES tables of
tests/reference/reference_test.MODULES, calls `prepare(case)` (weight conversion, building and
jitting: timed apart), runs `run()` once to warm up (and checks those outputs against the case
with the entry's `check`, unless --check=false), then times `--repeats` more calls and reports
their median beside the released code's `reference_cpu_seconds` of case.json: the entry that
`timing_key` names, else the only or first number (the table says which). The ratio is
released / vosjax (above 1: vosjax is faster). The released timings were taken on a shared
2-core CPU and are noisy upper bounds (see each case.json's note); time vosjax on the same kind of
machine, with nothing else running, for a fair ratio. Cases without a vosjax entry, or whose
entry fails, are listed as such rather than stopping the run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
import importlib
import statistics
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax
from absl import app, flags

from experiments import bench_common
from tests.reference import cases, entry, reference_test

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of run() after the warm-up call.")
_CASES = flags.DEFINE_list(
    "cases", ["*"], "Which cases ('<method>/<case>', shell patterns, comma-separated)."
)
_CHECK = flags.DEFINE_bool("check", True, "Check the warm-up outputs against the case.")


@dataclasses.dataclass
class Row:
    case: str
    vosjax_s: float | None = None
    prepare_s: float | None = None
    released_s: float | None = None
    released_entry: str = ""
    check: str = ""
    note: str = ""


def released_seconds(meta: dict[str, Any], timing_key: str | None) -> tuple[float | None, str]:
    """(the released code's seconds for `run()`, which entry of reference_cpu_seconds)."""
    timings = meta.get("reference_cpu_seconds")
    if isinstance(timings, (int, float)):
        return float(timings), "whole"
    if not isinstance(timings, dict):
        return None, "no reference_cpu_seconds"
    numbers = {k: v for k, v in timings.items() if isinstance(v, (int, float))}
    if timing_key is not None:
        if timing_key in numbers:
            return float(numbers[timing_key]), f"timing_key: {timing_key}"
        return None, f"none: timing_key {timing_key!r} is not in case.json"
    if not numbers:
        return None, "no number in reference_cpu_seconds"
    first = next(iter(numbers))
    label = "only" if len(numbers) == 1 else f"first of {len(numbers)}"
    return float(numbers[first]), f"{label}: {first}"


def case_tables() -> dict[str, tuple[dict[str, entry.CaseEntry], list[str]]]:
    """method folder -> (its merged CASES, the table modules that could not be imported)."""
    tables = {}
    for method, modules in reference_test.MODULES.items():
        merged, missing = {}, []
        for name in modules:
            try:
                merged.update(importlib.import_module(name).CASES)
            except Exception as e:  # noqa: BLE001 - a table being written must not stop the rest
                missing.append(f"{name} ({e.__class__.__name__}: {e})")
        tables[method] = (merged, missing)
    return tables


def bench_case(folder, table_entry: entry.CaseEntry, repeats: int, check: bool) -> Row:
    case = cases.load(folder)
    row = Row(f"{case.method}/{case.name}")
    row.released_s, row.released_entry = released_seconds(case.meta, table_entry.timing_key)
    start = time.perf_counter()
    run = table_entry.prepare(case)
    row.prepare_s = time.perf_counter() - start
    outputs = run()  # warm-up (compiles whatever prepare left to the first call)
    if check:
        try:
            table_entry.check(case, outputs)
            row.check = "ok"
        except AssertionError as e:
            row.check = "FAIL: " + str(e).splitlines()[0][:120]
    del outputs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    row.vosjax_s = statistics.median(times)
    return row


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def markdown(rows: Sequence[Row], repeats: int) -> str:
    lines = [
        f"| case | vosjax s (median of {repeats}) | prepare s | released s | released entry "
        "| released / vosjax | check |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "-"
        if r.vosjax_s and r.released_s:
            ratio = f"{r.released_s / r.vosjax_s:.2f}x"
        check = r.check or r.note
        lines.append(
            f"| {r.case} | {_seconds(r.vosjax_s)} | {_seconds(r.prepare_s)} | "
            f"{_seconds(r.released_s)} | {r.released_entry} | {ratio} | {check} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    repeats = _REPEATS.value
    if repeats < 1:
        raise app.UsageError(f"--repeats={repeats}: expected at least 1")
    folders = [
        f
        for f in cases.discover()
        if any(fnmatch.fnmatch(f"{f.parent.name}/{f.name}", p) for p in _CASES.value)
    ]
    if not folders:
        raise app.UsageError(
            f"no case under {cases.reference_dir()} matches --cases={_CASES.value}"
        )
    tables = case_tables()
    rows = []
    for folder in folders:
        name = f"{folder.parent.name}/{folder.name}"
        table, missing = tables.get(folder.parent.name, ({}, []))
        if folder.name not in table:
            meta = cases.load(folder).meta
            released, which = released_seconds(meta, None)
            why = "no vosjax entry" + (
                f" (not importable: {'; '.join(missing)})" if missing else ""
            )
            if folder.parent.name not in tables:
                why = f"no table for method folder {folder.parent.name!r}"
            rows.append(Row(name, released_s=released, released_entry=which, note=why))
            print(f"{name}: {why}", flush=True)
            continue
        print(f"{name}: preparing", flush=True)
        try:
            row = bench_case(folder, table[folder.name], repeats, _CHECK.value)
        except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
            traceback.print_exc()
            row = Row(name, note=f"error: {e.__class__.__name__}: {str(e)[:120]}")
        rows.append(row)
        print(
            f"{name}: {_seconds(row.vosjax_s)} s, released {_seconds(row.released_s)} s", flush=True
        )
        gc.collect()
        jax.clear_caches()
    print()
    print(
        f"Machine: {bench_common.machine()}; jax {jax.__version__}; cases: {cases.reference_dir()}"
    )
    print()
    print(markdown(rows, repeats))


if __name__ == "__main__":
    app.run(main)
