"""Mask-VOS's alternation inside one run: rounds, cached pseudo masks, resume mid-schedule."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs.maskvos import r18
from vosjax import checkpointing, main, train
from vosjax.methods.maskvos import method, pseudo_masks, schedule


def test_round_starts():
    assert schedule.round_starts(100, 10, 30) == [0, 10, 40, 70]
    assert schedule.round_starts(100, 0, 30) == [0, 30, 60, 90]
    assert schedule.round_starts(100, 10, 0) == [0, 10]  # cluster once
    assert schedule.round_starts(100, 0, 0) == [0]
    assert schedule.round_starts(5, 10, 2) == [0]  # the warm-up outlasts the run
    with pytest.raises(ValueError, match="config.schedule.update_every=-1"):
        schedule.round_starts(10, 0, -1)


def _config(num_steps: int):
    config = r18.get_config("smoke")
    config.num_train_steps = num_steps
    config.schedule.warmup_steps = 1
    config.schedule.update_every = 2
    config.checkpoint_every_steps = 1
    config.keep_checkpoints = 10
    config.async_checkpoints = False
    config.log_every_steps = 1
    return config


def _train(config, workdir):
    return train.train_and_evaluate(
        config,
        workdir,
        method.MaskVOS(config),
        None,
        None,
        rounds=main.data_rounds(config, str(workdir)),
    )


def _host_params(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _drop_checkpoints_after(workdir, step):
    for folder in (workdir / "checkpoints").iterdir():
        if folder.name.isdigit() and int(folder.name) > step:
            shutil.rmtree(folder)


@pytest.mark.slow
def test_resume_in_the_middle_of_a_reclustering_schedule(tmp_path):
    """Rounds start at 0 (correspondence only), 1 and 3: pseudo masks are made at steps 1 and
    3. Resumed from step 2 (inside the round of step 1, then across the round boundary at 3),
    the run reuses the cached masks and the data position and ends with bitwise the parameters
    of the uninterrupted run. (A resume at a round's first step takes the same path as the
    start of a round in an uninterrupted run: `train._loop`.)"""
    config = _config(4)
    workdir = tmp_path / "run"
    reference = _host_params(_train(config, workdir))
    cache = workdir / "pseudo_masks"
    assert sorted(p.name for p in cache.iterdir()) == ["step_1", "step_3"]
    meta = json.loads((cache / "step_3" / pseudo_masks.META).read_text())
    assert meta["step"] == 3 and meta["config"]["num_clusters"] == 5
    assert len(meta["videos"]) == 4  # the synthetic 'tiny' train videos
    # The re-clustering with the encoder of step 3 is visible: other masks than step 1's.
    video = meta["videos"][0]
    first = pseudo_masks.read_masks(cache / "step_1" / video, range(8))
    second = pseudo_masks.read_masks(cache / "step_3" / video, range(8))
    assert first.shape == second.shape == (8, 8, 8)
    assert first.max() < 5 and second.max() < 5
    assert not np.array_equal(first, second)
    mtime = (cache / "step_3" / pseudo_masks.META).stat().st_mtime_ns

    _drop_checkpoints_after(workdir, 2)
    with checkpointing.Checkpointer(workdir / "checkpoints", handle_sigterm=False) as ckpt:
        assert ckpt.latest_step() == 2
    resumed = _host_params(_train(config, workdir))
    for a, b in zip(reference, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (cache / "step_3" / pseudo_masks.META).stat().st_mtime_ns == mtime  # reused


def test_bad_schedule_fields_are_named(tmp_path):
    config = _config(5)
    with pytest.raises(ValueError, match="config.schedule.warmup_steps=-2"):
        config.schedule.warmup_steps = -2
        main.data_rounds(config, str(tmp_path))
