"""Why a checkpoint step cannot be restored: checks of its files that orbax would fail on.

Used by `vosjax.checkpointing` before it lets orbax read a step, so that a damaged step is
reported in one line (and skipped) instead of failing deep inside orbax, tensorstore or grain.
"""

from __future__ import annotations

import json
import pathlib
import re

import tensorstore as ts

# The longest underlying error message kept in a damage report (orbax's can run to kilobytes).
MAX_REASON_CHARS = 800
# tensorstore ends its messages with its whole spec (a kilobyte of JSON) after the cause.
_TENSORSTORE_TRAILER = re.compile(
    r"\s*\[(tensorstore_spec|source locations)(\[\d+\])?=.*$", re.DOTALL
)


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, cut to `MAX_REASON_CHARS`."""
    message = " ".join(_TENSORSTORE_TRAILER.sub("", str(error)).split()) or repr(error)
    text = f"{type(error).__name__}: {message}"
    if len(text) <= MAX_REASON_CHARS:
        return text
    half = (MAX_REASON_CHARS - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


# A location in an OCDBT dump: 'btreenode:<base>:<file>:<offset>:<length>' or 'value:...'.
_OCDBT_LOCATION = re.compile(r"^(btreenode|value):([^:]*):(.+):(\d+):(\d+)$")


def array_files_problem(state: pathlib.Path) -> str | None:
    """Why the array data of an OCDBT state folder cannot be read (None: every file is there).

    Walks the b-tree (reading its nodes only, not the array values) and checks that every data
    file it points into exists and is long enough: a missing or truncated file is found before
    orbax's restore, which would fail on it with kilobytes of tensorstore and asyncio errors.
    """
    sizes: dict[pathlib.Path, int] = {}  # data file -> bytes the b-tree needs in it

    def note(location: str) -> pathlib.Path:
        match = _OCDBT_LOCATION.match(location)
        if match is None:
            raise ValueError(f"unexpected OCDBT location {location!r}")
        _, base, name, offset, length = match.groups()
        path = state / base / name
        sizes[path] = max(sizes.get(path, 0), int(offset) + int(length))
        return path

    def file_problem(path: pathlib.Path) -> str | None:
        if not path.is_file():
            return f"the array data file {path} is missing"
        if path.stat().st_size < sizes[path]:
            return (
                f"the array data file {path} is truncated ({path.stat().st_size} bytes, "
                f"{sizes[path]} expected)"
            )
        return None

    try:
        store = ts.KvStore.open({"driver": "file", "path": f"{state}/"}).result()
        versions = ts.ocdbt.dump(store).result()["versions"]
        pending = [versions[-1]["root"]["location"]] if versions else []
        while pending:
            problem = file_problem(note(node := pending.pop()))
            if problem is not None:
                return problem
            for entry in ts.ocdbt.dump(store, node).result()["entries"]:
                for value in entry.values():
                    if isinstance(value, str) and value.startswith("btreenode:"):
                        pending.append(value)
                    elif isinstance(value, str) and value.startswith("value:"):
                        note(value)
    except Exception as error:  # an unreadable b-tree is damage
        return f"the state's array index in {state} is unreadable ({one_line(error)})"
    for path in sorted(sizes):
        problem = file_problem(path)
        if problem is not None:
            return problem
    return None


def json_file_problem(path: pathlib.Path, what: str) -> str | None:
    """Why `path` is not a readable JSON file (None: it is)."""
    if not path.is_file():
        return f"{what} {path} is missing"
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        return f"{what} {path} is unreadable ({one_line(error)})"
    return None


def step_problem(folder: pathlib.Path, data_file: str | None, data: str) -> str | None:
    """What is missing or unreadable in a step folder (None: nothing found).

    Args:
      folder: the step's folder (`<checkpoints>/<step>`).
      data_file: this process's data-iterator file name (`process_<i>-of-<n>.json`).
      data: whether that file is checked: 'required', 'if_saved' (when the step holds a `data`
        folder: a resume restores the iterator later) or 'no' (the weights only).
    """
    state = folder / "state"
    if not state.is_dir():
        return f"the state folder {state} is missing"
    metadata = state / "_METADATA"
    problem = json_file_problem(metadata, "the state's metadata")
    if problem is not None:
        return problem
    if json.loads(metadata.read_bytes()).get("use_ocdbt"):
        if not (state / "manifest.ocdbt").is_file():
            return f"the state's array manifest {state / 'manifest.ocdbt'} is missing"
        problem = array_files_problem(state)
        if problem is not None:
            return problem
    data_folder = folder / "data"
    if data == "required" or (data == "if_saved" and data_folder.is_dir()):
        problem = json_file_problem(data_folder / data_file, "the data-iterator file")
        saved = sorted(p.name for p in data_folder.glob("process_*-of-*.json"))
        if (
            problem is not None
            and saved
            and not any(name.endswith(data_file[data_file.index("-of-") :]) for name in saved)
        ):
            # Not damage: the run was saved by another number of processes.
            problem += f" (the data iterator was saved by other processes: {', '.join(saved)})"
        return problem
    return None
