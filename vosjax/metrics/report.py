"""Writers for evaluation results: the official CSVs, results.json and a printed table.

The CSVs have the bytes that the official toolkit writes with pandas
`to_csv(float_format="%.3f", index=False)`: a header row, values with 3 decimals, NaN as an
empty field, '\\n' line ends, fields quoted only when needed. results.json keeps full precision in
the schema of the golden files:
`{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay",
  "per_object": {"<seq>_<k>": {"J-Mean", "F-Mean"}}}`.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from collections.abc import Mapping, Sequence

from vosjax.data import image_io

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
RESULTS_JSON = "results.json"


def global_csv_name(split: str = "val") -> str:
    """'global_results-<split>.csv', the official toolkit's file name."""
    return f"global_results-{split}.csv"


def per_sequence_csv_name(split: str = "val") -> str:
    """'per-sequence_results-<split>.csv', the official toolkit's file name."""
    return f"per-sequence_results-{split}.csv"


def _format(value: float) -> str:
    # pandas writes NaN as an empty field (na_rep='') and every other float with float_format.
    return "" if math.isnan(value) else f"{value:.3f}"


def _write_rows(path: pathlib.Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _check(results: Mapping, where: str) -> None:
    missing = [c for c in GLOBAL_COLUMNS if c not in results]
    if missing or "per_object" not in results:
        raise ValueError(
            f"{where}: results lack {missing or ['per_object']}; expected the dict of "
            "davis_protocol.summarize"
        )


def write_global_csv(path: image_io.PathLike, results: Mapping) -> None:
    """Writes the one-row global table (columns `GLOBAL_COLUMNS`)."""
    _check(results, str(path))
    _write_rows(pathlib.Path(path), GLOBAL_COLUMNS, [[_format(results[c]) for c in GLOBAL_COLUMNS]])


def write_per_sequence_csv(path: image_io.PathLike, results: Mapping) -> None:
    """Writes one row per object: `Sequence,J-Mean,F-Mean` with names `<seq>_<k>`."""
    _check(results, str(path))
    rows = [
        [name, _format(scores["J-Mean"]), _format(scores["F-Mean"])]
        for name, scores in results["per_object"].items()
    ]
    _write_rows(pathlib.Path(path), PER_SEQUENCE_COLUMNS, rows)


def write_results_json(path: image_io.PathLike, results: Mapping) -> None:
    """Writes `results` at full precision (the golden.json schema)."""
    _check(results, str(path))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {c: float(results[c]) for c in GLOBAL_COLUMNS}
    document["per_object"] = {
        name: {"J-Mean": float(s["J-Mean"]), "F-Mean": float(s["F-Mean"])}
        for name, s in results["per_object"].items()
    }
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def write_all(
    results: Mapping, results_dir: image_io.PathLike, split: str = "val"
) -> list[pathlib.Path]:
    """Writes both CSVs and results.json into `results_dir`, replacing old ones.

    Args:
      results: the dict of `davis_protocol.summarize`.
      results_dir: output folder (created if needed).
      split: the split in the CSV names, as the toolkit's `--set`.

    Returns:
      The paths written.
    """
    results_dir = pathlib.Path(results_dir)
    paths = [
        results_dir / global_csv_name(split),
        results_dir / per_sequence_csv_name(split),
        results_dir / RESULTS_JSON,
    ]
    write_global_csv(paths[0], results)
    write_per_sequence_csv(paths[1], results)
    write_results_json(paths[2], results)
    return paths


def format_table(results: Mapping, title: str = "") -> str:
    """The global numbers and the per-object means as aligned text, 3 decimals."""
    _check(results, "format_table")
    suffix = f" for {title}" if title else ""
    widths = [max(len(c), 6) for c in GLOBAL_COLUMNS]
    lines = [
        f"---------- Global results{suffix} ----------",
        " ".join(c.rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths, strict=True)),
        " ".join(_format(results[c]).rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths, strict=True)),
        "",
        f"---------- Per-object results{suffix} ----------",
    ]
    names = list(results["per_object"])
    name_width = max([len(PER_SEQUENCE_COLUMNS[0]), *map(len, names)])
    lines.append(
        f"{PER_SEQUENCE_COLUMNS[0].ljust(name_width)} "
        + " ".join(c.rjust(6) for c in PER_SEQUENCE_COLUMNS[1:])
    )
    for name in names:
        scores = results["per_object"][name]
        lines.append(
            f"{name.ljust(name_width)} "
            + " ".join(_format(scores[c]).rjust(6) for c in PER_SEQUENCE_COLUMNS[1:])
        )
    return "\n".join(lines)
