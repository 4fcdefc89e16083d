"""Tests of vosjax.checkpointing on 8 fake CPU devices."""

import os
import signal

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
