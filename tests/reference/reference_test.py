"""Every case folder under $VOSJAX_REFERENCE_DIR against vosjax (one test per folder, none skipped).

A case is dispatched on its folder names (`<method>/<case>`) to the matching entry of a method's
`CASES` tables (the modules in MODULES): `prepare(case)` converts the case's weights and
builds the jitted computation, returning `run()`; `run()` computes vosjax's outputs from the case's
inputs; `check(case, outputs)` compares them at the tolerances that case.json states. A folder that
no table knows is a failure, not a skip.
"""

from __future__ import annotations

import importlib

import pytest

from tests.reference import cases

# method folder -> the modules whose CASES tables together cover its cases.
MODULES = {
    "maskvos": ("tests.reference.maskvos_cases",),
    "ino": ("tests.reference.ino_cases", "tests.reference.ino_propagation_case"),
    "shls": ("tests.reference.shls_superpixel_cases", "tests.reference.shls_network_cases"),
    "propagation": ("tests.reference.propagation_cases",),
}


def case_table(method: str) -> dict:
    """The merged CASES tables of a method folder."""
    if method not in MODULES:
        pytest.fail(f"reference method folder {method!r}: vosjax knows {sorted(MODULES)}")
    table = {}
    for name in MODULES[method]:
        table.update(importlib.import_module(name).CASES)
    return table


def test_reference_folder_has_cases():
    folders = cases.discover()
    assert folders, f"no case.json under {cases.reference_dir()} (VOSJAX_REFERENCE_DIR)"


@pytest.mark.parametrize(
    "folder",
    cases.discover(),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_reference_case(folder):
    case = cases.load(folder)
    table = case_table(case.method)
    if case.name not in table:
        pytest.fail(f"{folder}: no vosjax check for case {case.name!r}; known: {sorted(table)}")
    entry = table[case.name]
    run = entry.prepare(case)
    outputs = run()
    entry.check(case, outputs)
