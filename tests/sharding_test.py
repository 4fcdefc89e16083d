"""Tests of the mesh and batch sharding on 8 fake CPU devices."""

import jax
import numpy as np
import pytest

from vosjax import sharding


def test_make_mesh_fills_the_data_axis():
    mesh = sharding.make_mesh({"data": -1})
    assert dict(mesh.shape) == {"data": 8}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    mesh2 = sharding.make_mesh({"data": -1, "model": 2})
    assert dict(mesh2.shape) == {"data": 4, "model": 2}


def test_make_mesh_errors_name_the_field():
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.make_mesh({"data": 3})
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.make_mesh({"model": -1})


def test_per_host_batch_size():
    mesh = sharding.make_mesh({"data": -1})
    assert sharding.per_host_batch_size(16, mesh) == 16
    with pytest.raises(ValueError, match="config.batch_size=12"):
        sharding.per_host_batch_size(12, mesh)


def test_shard_batch_splits_over_8_devices():
    mesh = sharding.make_mesh({"data": -1})
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = sharding.shard_batch(local, mesh)
    x = batch["x"]
    assert x.shape == (16, 3)
    assert len(x.sharding.device_set) == 8
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape for s in shards] == [(2, 3)] * 8
    np.testing.assert_array_equal(np.asarray(shards[3].data), local["x"][6:8])
    np.testing.assert_array_equal(np.asarray(x), local["x"])


def test_text_collectives_return_the_text_cut_to_its_byte_budget():
    # One process here: broadcast and all-gather give back this process's own text, unpadded.
    assert sharding.broadcast_text("step 6: the data file is missing", 64) == (
        "step 6: the data file is missing"
    )
    assert sharding.allgather_text("", 16) == [""]
    assert sharding.allgather_text("abcdef", 4) == ["abcd"]
    # A character cut in the middle of its UTF-8 bytes becomes the replacement character.
    assert sharding.broadcast_text("ab\u00e9", 3) == "ab\ufffd"
