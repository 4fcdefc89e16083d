"""CSV bytes, results.json schema and the printed table."""

import json
import math

import pytest

from vosjax.metrics import report

RESULTS = {
    "J&F-Mean": 0.9220552875007881,
    "J-Mean": 0.0005,
    "J-Recall": 1.0,
    "J-Decay": -0.0004,
    "F-Mean": float("nan"),
    "F-Recall": 0.9995,
    "F-Decay": 0.0625,
    "per_object": {
        "bike-packing_1": {"J-Mean": 0.8440989785377644, "F-Mean": 0.0},
        "a,b_1": {"J-Mean": 1.0, "F-Mean": float("nan")},
        'q"x_2': {"J-Mean": 0.12345, "F-Mean": 0.5555},
    },
}

# Written by the official code path, pandas 3.1.1 `DataFrame.to_csv(f, index=False,
# float_format="%.3f")`, for RESULTS: NaN is an empty field, -0.0004 is '-0.000', fields with a
# comma or a quote are quoted.
GLOBAL_BYTES = (
    b"J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
    b"0.922,0.001,1.000,-0.000,,1.000,0.062\n"
)
PER_SEQUENCE_BYTES = (
    b'Sequence,J-Mean,F-Mean\nbike-packing_1,0.844,0.000\n"a,b_1",1.000,\n"q""x_2",0.123,0.555\n'
)


def test_csv_bytes_equal_the_official_toolkit(tmp_path):
    report.write_global_csv(tmp_path / "g.csv", RESULTS)
    report.write_per_sequence_csv(tmp_path / "s.csv", RESULTS)
    assert (tmp_path / "g.csv").read_bytes() == GLOBAL_BYTES
    assert (tmp_path / "s.csv").read_bytes() == PER_SEQUENCE_BYTES


def test_write_all_names_and_overwrites(tmp_path):
    (tmp_path / "global_results-val.csv").write_text("J&F-Mean\n1.000\n")  # a stale result
    paths = report.write_all(RESULTS, tmp_path)
    assert [p.name for p in paths] == [
        "global_results-val.csv",
        "per-sequence_results-val.csv",
        "results.json",
    ]
    assert paths[0].read_bytes() == GLOBAL_BYTES
    assert report.write_all(RESULTS, tmp_path, split="test-dev")[0].name == (
        "global_results-test-dev.csv"
    )


def test_results_json_full_precision_and_golden_schema(tmp_path, golden_root):
    report.write_results_json(tmp_path / "results.json", RESULTS)
    written = json.loads((tmp_path / "results.json").read_text())
    golden = json.loads((golden_root / "osvos17-dev" / "mild" / "golden.json").read_text())
    assert list(written) == list(golden)
    assert written["J&F-Mean"] == 0.9220552875007881
    assert written["per_object"]["bike-packing_1"] == {"J-Mean": 0.8440989785377644, "F-Mean": 0.0}
    assert math.isnan(written["F-Mean"])
    assert set(next(iter(golden["per_object"].values()))) == {"J-Mean", "F-Mean"}


def test_format_table():
    table = report.format_table(RESULTS, title="2017/val")
    lines = table.splitlines()
    assert "Global results for 2017/val" in lines[0]
    assert lines[1].split() == list(report.GLOBAL_COLUMNS)
    assert lines[2].split() == ["0.922", "0.001", "1.000", "-0.000", "1.000", "0.062"]
    assert lines[-3].split() == ["bike-packing_1", "0.844", "0.000"]


def test_incomplete_results_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="J-Decay"):
        report.write_global_csv(tmp_path / "g.csv", {"J-Mean": 1.0, "per_object": {}})
