"""A damaged newest checkpoint: restore falls back to the newest intact step (8 fake devices).

Each damage kind of issue 31: a truncated array file, a deleted `state/_METADATA`, a missing
data-iterator file (grain's per-process JSON).
"""

import logging
import pathlib
import re

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax import checkpointing, sharding


def _state(mesh, value):
    state = {"w": jnp.full((64, 3), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}
    return jax.device_put(state, sharding.replicated(mesh))


def _abstract(mesh):
    state = _state(mesh, 0)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return checkpointing.with_shardings(jax.eval_shape(lambda: state), shardings)


def _dataset():
    return grain.MapDataset.range(1000).shuffle(seed=3).batch(4).to_iter_dataset()


def _save_steps(directory, mesh, steps=(2, 4, 6)):
    """Saves `steps` (state value = step) with the iterator after `step` batches; returns the
    batch that follows each step."""
    iterator = iter(_dataset())
    following = {}
    with checkpointing.Checkpointer(directory, max_to_keep=None) as ckpt:
        position = 0
        for step in steps:
            while position < step:
                next(iterator)
                position += 1
            ckpt.save(step, _state(mesh, step), iterator)
            ckpt.wait_until_finished()
            following[step] = next(_copy_iterator(iterator))
    return following


def _copy_iterator(iterator):
    copy = iter(_dataset())
    copy.set_state(iterator.get_state())
    return copy


def _truncate_array_file(step_dir: pathlib.Path) -> tuple[pathlib.Path, int]:
    """Halves the largest array data file of the state (what orbax reads, `state/d/*`);
    returns it and its size before."""
    path = max((step_dir / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    return path, size


def _damage(step_dir: pathlib.Path, kind: str) -> tuple[pathlib.Path, str]:
    """Damages a step folder; returns the damaged file and a pattern of the expected reason."""
    if kind == "truncated_array":
        path, size = _truncate_array_file(step_dir)
        return (
            path,
            rf"the array data file {path} is truncated \({size // 2} bytes, {size} expected",
        )
    if kind == "deleted_metadata":
        path = step_dir / "state" / "_METADATA"
        path.unlink()
        return path, r"the state's metadata .*_METADATA is missing"
    path = step_dir / "data" / "process_0-of-1.json"
    path.unlink()
    return path, r"the data-iterator file .*process_0-of-1.json is missing"


KINDS = ("truncated_array", "deleted_metadata", "missing_data_file")


@pytest.mark.parametrize("kind", KINDS)
def test_restore_falls_back_to_the_newest_intact_step(tmp_path, caplog, kind):
    mesh = sharding.make_mesh({"data": -1})
    directory = tmp_path / "checkpoints"
    following = _save_steps(directory, mesh)
    damaged_file, reason = _damage(directory / "6", kind)
    damaged_size = damaged_file.stat().st_size if damaged_file.exists() else None
    files_before = sorted(p.relative_to(directory / "6") for p in (directory / "6").rglob("*"))

    with checkpointing.Checkpointer(directory) as ckpt:
        iterator = iter(_dataset())
        with caplog.at_level(logging.WARNING):
            restored, step = ckpt.restore(_abstract(mesh), data_iterator=iterator)
        assert step == 4
        np.testing.assert_array_equal(restored["w"], np.full((64, 3), 4.0))
        np.testing.assert_array_equal(next(iterator), following[4])  # step 4's position
        assert ckpt.all_steps() == [2, 4]
        # The step is trained again: its number must be saved again (orbax's cached list of
        # steps would otherwise skip it) and be the newest restorable step.
        ckpt.save(6, _state(mesh, 60), iterator)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 4, 6]
        again, step = ckpt.restore(_abstract(mesh), data_iterator=iter(_dataset()))
    assert step == 6 and float(again["w"][0, 0]) == 60.0

    # One line names the step and the cause; no traceback in the log.
    damage_lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damage_lines) == 1, damage_lines
    assert "Checkpoint step 6 in" in damage_lines[0]
    assert re.search(reason, damage_lines[0]), damage_lines[0]
    assert "Traceback" not in caplog.text
    # Moved aside, not deleted: every file that was there is there, the damage unchanged.
    moved = tmp_path / "checkpoints_damaged" / "6"
    assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == files_before
    moved_file = moved / damaged_file.relative_to(directory / "6")
    assert (moved_file.stat().st_size if moved_file.exists() else None) == damaged_size
    note = (tmp_path / "checkpoints_damaged" / "6.txt").read_text()
    assert note.startswith(f"Moved from {directory / '6'}: ")
    assert re.search(reason, note)


def test_an_explicit_damaged_step_is_an_error_and_nothing_moves(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    directory = tmp_path / "checkpoints"
    _save_steps(directory, mesh)
    _damage(directory / "6", "deleted_metadata")
    with checkpointing.Checkpointer(directory) as ckpt:
        with pytest.raises(
            checkpointing.DamagedCheckpointError,
            match=r"checkpoints/6: checkpoint step 6 is damaged: the state's metadata "
            r".*_METADATA is missing \(saved steps: \[2, 4, 6\]",
        ):
            ckpt.restore(_abstract(mesh), step=6)
        with pytest.raises(checkpointing.DamagedCheckpointError, match="step 6 is damaged"):
            ckpt.restore_raw()  # init_from / average_checkpoints: no fallback either
        raw, step = ckpt.restore_raw(4)
        assert step == 4 and float(np.asarray(raw["w"])[0, 0]) == 4.0
        # A run resumed with another number of processes is told so.
        data = directory / "4" / "data"
        (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
        with pytest.raises(
            checkpointing.DamagedCheckpointError,
            match=r"process_0-of-1.json is missing \(the data iterator was saved by other "
            r"processes: process_0-of-2.json\)",
        ):
            ckpt.restore(_abstract(mesh), step=4)
    assert (directory / "6").is_dir() and not (tmp_path / "checkpoints_damaged").exists()


def test_no_intact_step_names_each_step_and_why(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    directory = tmp_path / "checkpoints"
    _save_steps(directory, mesh, steps=(2, 4))
    _damage(directory / "4", "missing_data_file")
    _damage(directory / "2", "deleted_metadata")
    with checkpointing.Checkpointer(directory) as ckpt:
        with pytest.raises(checkpointing.DamagedCheckpointError) as error:
            ckpt.restore(_abstract(mesh), data_iterator=iter(_dataset()))
    message = str(error.value)
    assert message.startswith(f"{directory}: no intact checkpoint; step 4: the data-iterator")
    assert "; step 2: the state's metadata" in message
    assert message.endswith(
        "Nothing was moved: move these steps out of the folder (or use "
        "another workdir) to start afresh"
    )
    # Nothing moved: a restarted run fails the same way instead of starting from scratch.
    assert not (tmp_path / "checkpoints_damaged").exists()
    with checkpointing.Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [2, 4]


def test_a_reader_skips_damaged_steps_without_moving_them_and_names_collide_safely(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    directory = tmp_path / "checkpoints"
    _save_steps(directory, mesh)
    _damage(directory / "6", "missing_data_file")
    with checkpointing.Checkpointer(directory, move_damaged=False) as reader:
        _, step = reader.restore(_abstract(mesh))  # a data folder is checked even without one
        assert step == 4 and reader.all_steps() == [2, 4, 6]
    assert (directory / "6").is_dir()
    # Step 6 moved aside, saved again, damaged again: the second copy gets another name.
    with checkpointing.Checkpointer(directory) as ckpt:
        assert ckpt.restore(_abstract(mesh))[1] == 4
        ckpt.save(6, _state(mesh, 6))
    with checkpointing.Checkpointer(directory) as ckpt:
        _damage(directory / "6", "deleted_metadata")
        assert ckpt.restore(_abstract(mesh))[1] == 4
    damaged = tmp_path / "checkpoints_damaged"
    assert sorted(p.name for p in damaged.iterdir()) == ["6", "6.2", "6.2.txt", "6.txt"]
    assert "data-iterator file" in (damaged / "6.txt").read_text()
    assert "_METADATA is missing" in (damaged / "6.2.txt").read_text()
    assert (damaged / "6.2" / "state" / "manifest.ocdbt").is_file()
