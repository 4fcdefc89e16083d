"""Tests of vosjax.checkpointing on 8 fake CPU devices."""

import asyncio
import os
import signal
import threading

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax import checkpointing, sharding


def _state(mesh, value):
    state = {"w": jnp.full((4, 3), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}
    return jax.device_put(state, sharding.replicated(mesh))


def _abstract(state):
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return checkpointing.with_shardings(jax.eval_shape(lambda: state), shardings)


def _dataset():
    return grain.MapDataset.range(1000).shuffle(seed=3).batch(4).to_iter_dataset()


def test_save_restore_state_and_grain_iterator(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    iterator = iter(_dataset())
    with checkpointing.Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
        for step in (2, 4, 6):
            next(iterator)
            ckpt.save(step, _state(mesh, step), iterator)
        expected_next = next(iterator)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [4, 6]  # keep 2
        assert ckpt.should_save(4) and not ckpt.should_save(5)
        fresh = iter(_dataset())
        restored, step = ckpt.restore(_abstract(_state(mesh, 0)), data_iterator=fresh)
        assert step == 6
        np.testing.assert_array_equal(restored["w"], np.full((4, 3), 6.0))
        assert restored["w"].sharding == sharding.replicated(mesh)
        np.testing.assert_array_equal(next(fresh), expected_next)
        older, step = ckpt.restore(_abstract(_state(mesh, 0)), step=4)
        assert step == 4 and int(older["step"]) == 4
        with pytest.raises(FileNotFoundError, match="no checkpoint of step 2"):
            ckpt.restore(_abstract(_state(mesh, 0)), step=2)


class _Counter:
    def __init__(self):
        self.position = 0

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_plain_stateful_iterator_and_sigterm(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    counter = _Counter()
    counter.position = 17
    with checkpointing.Checkpointer(tmp_path, save_interval_steps=5) as ckpt:
        assert not ckpt.preempted(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: requests a save, does not kill
        assert ckpt.preempted(1)
        ckpt.save(1, _state(mesh, 1), counter)
        ckpt.wait_until_finished()
        restored_counter = _Counter()
        _, step = ckpt.restore(_abstract(_state(mesh, 0)), data_iterator=restored_counter)
    assert step == 1 and restored_counter.position == 17
    assert signal.getsignal(signal.SIGTERM) is not None


@flax.struct.dataclass
class _TrainState:
    params: dict
    step: jax.Array


def _train_state(mesh, scale, step):
    params = {"w": jnp.arange(12, dtype=jnp.float32).reshape(4, 3) * scale}
    params["bn"] = {"var": jnp.full((3,), scale, jnp.bfloat16)}
    state = _TrainState(params, jnp.array(step, jnp.int32))
    return jax.device_put(state, sharding.replicated(mesh))


def test_average_checkpoints_restores_into_the_train_state(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    with checkpointing.Checkpointer(tmp_path / "run", max_to_keep=2) as ckpt:
        for step, scale in ((10, 1.0), (20, 2.0), (30, 6.0)):
            ckpt.save(step, _train_state(mesh, scale, step))
    # max_to_keep=2 left steps 20 and 30; a fourth, step 10, is gone.
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint of step 10; saved steps are \[20, 30\]"
    ):
        checkpointing.average_checkpoints(tmp_path / "run", [10, 20], tmp_path / "avg")
    out_step = checkpointing.average_checkpoints(tmp_path / "run", [30, 20], tmp_path / "avg")
    assert out_step == 30
    abstract = _abstract(_train_state(mesh, 0.0, 0))
    with checkpointing.Checkpointer(tmp_path / "avg") as avg:
        assert avg.all_steps() == [30]
        restored, step = avg.restore(abstract)
    np.testing.assert_array_equal(restored.params["w"], np.arange(12.0).reshape(4, 3) * 4.0)
    assert restored.params["bn"]["var"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(restored.params["bn"]["var"].astype(np.float32), 4.0)
    assert int(restored.step) == 30  # integers: the last step's
    # The source run is untouched.
    with checkpointing.Checkpointer(tmp_path / "run") as ckpt:
        original, _ = ckpt.restore(abstract, step=30)
    np.testing.assert_array_equal(original.params["w"], np.arange(12.0).reshape(4, 3) * 6.0)
    assert (
        checkpointing.average_checkpoints(tmp_path / "run", [20, 30], tmp_path / "avg2", out_step=7)
        == 7
    )
    with pytest.raises(FileExistsError, match="step 30 is already saved"):
        checkpointing.average_checkpoints(tmp_path / "run", [20, 30], tmp_path / "avg")


def test_average_checkpoints_rejects_bad_requests(tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    with checkpointing.Checkpointer(tmp_path / "run", max_to_keep=None) as ckpt:
        ckpt.save(1, _state(mesh, 1.0))
        ckpt.save(2, _state(mesh, 2.0))
        ckpt.save(3, {"w": jnp.zeros((2, 3)), "step": jnp.array(3)})
    with pytest.raises(ValueError, match=r"two or more distinct steps, got \[1\]"):
        checkpointing.average_checkpoints(tmp_path / "run", [1, 1], tmp_path / "avg")
    with pytest.raises(ValueError, match="out_directory must differ"):
        checkpointing.average_checkpoints(tmp_path / "run", [1, 2], tmp_path / "run")
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(4, 3\) at step 1 but \(2, 3\)"):
        checkpointing.average_checkpoints(tmp_path / "run", [1, 3], tmp_path / "avg")


def test_an_old_step_is_pruned_only_once_the_newer_one_is_complete(tmp_path, monkeypatch):
    """orbax 0.12.8's order under asynchronous writes: a step is written to a temporary folder,
    renamed once complete, and only then are steps beyond `max_to_keep` deleted; a failed write
    deletes nothing, leaves its temporary folder (ignored when steps are listed) and the step
    can be saved again."""
    from orbax.checkpoint._src.path import atomicity

    mesh = sharding.make_mesh({"data": -1})
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    entered, release = threading.Event(), threading.Event()
    failing = {"3"}

    async def held_finalize(self):
        if self.get_final().name in ("2", "3"):
            entered.set()
            await asyncio.to_thread(release.wait, 60)
            if self.get_final().name in failing:
                raise OSError("no space left on device")
        await finalize(self)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", held_finalize)

    def restored(step):
        with checkpointing.Checkpointer(tmp_path, handle_sigterm=False, move_damaged=False) as c:
            return float(np.asarray(c.restore_raw(step)[0]["w"])[0, 0])

    with checkpointing.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(1, _state(mesh, 1))
        ckpt.wait_until_finished()
        ckpt.save(2, _state(mesh, 2))
        assert entered.wait(60)
        # Step 2 is being written (every file in its temporary folder): step 1 is untouched.
        assert (tmp_path / "2.orbax-checkpoint-tmp").is_dir() and not (tmp_path / "2").exists()
        assert restored(1) == 1.0
        release.set()
        ckpt.wait_until_finished()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]  # pruned after the rename
        entered.clear()
        release.clear()
        ckpt.save(3, _state(mesh, 3))
        assert entered.wait(60)
        release.set()
        with pytest.raises(OSError, match="no space left"):
            ckpt.wait_until_finished()
    # The failed write deleted nothing: step 2 is intact, step 3's temporary folder is ignored.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3.orbax-checkpoint-tmp"]
    assert restored(2) == 2.0
    failing.clear()
    with checkpointing.Checkpointer(tmp_path, max_to_keep=1, async_writes=False) as ckpt:
        assert ckpt.all_steps() == [2]
        ckpt.save(3, _state(mesh, 3))  # the temporary folder is replaced, step 2 then pruned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]
    assert restored(3) == 3.0
