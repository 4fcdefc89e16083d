"""A workdir records its config and state shapes; a resume that does not fit stops at start."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest
from flax import nnx

from tests import toy_method
from vosjax import run_record, train

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _WidthMethod(toy_method.ToyMethod):
    """A model whose kernel shape is a config field: [2, config.model.width]."""

    def build_model(self, config, rngs):
        return nnx.Linear(2, config.model.width, rngs=rngs)


def _config(width=3, **changes):
    config = toy_method.config(8)
    config.method = "toy"
    config.model = {"width": width}
    config.data = {"path": "/data/a"}
    for name, value in changes.items():
        *head, last = name.split(".")
        node = config
        for key in head:
            node = node[key]
        node[last] = value
    return config


def _check(workdir, config, write=True):
    trainer = train.Trainer(config, _WidthMethod())
    run_record.check(workdir, config, trainer.abstract_state, write=write)


def _trained(workdir, config):
    """A workdir as a run of `config` leaves it: the record and a step-4 checkpoint."""
    _check(workdir, config)
    (workdir / "checkpoints" / "4").mkdir(parents=True)


def test_a_new_run_records_its_config_and_state_shapes(tmp_path):
    config = _config()
    _check(tmp_path, config)
    assert json.loads((tmp_path / "config.json").read_text()) == run_record.config_as_json(config)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["method"] == "toy"
    assert info["params"]["kernel"] == {"shape": [2, 3], "dtype": "float32"}
    assert info["params"]["bias"] == {"shape": [3], "dtype": "float32"}
    # Adam's moments, per parameter path.
    assert info["opt_state"]["1/0/mu/kernel"]["shape"] == [2, 3]
    assert info["model_state"] == {}


def test_a_shape_changing_field_stops_naming_the_field_and_both_shapes(tmp_path):
    _trained(tmp_path, _config(width=3))
    before = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    # num_train_steps (safe) changes too: not listed.
    with pytest.raises(run_record.RunMismatchError) as error:
        _check(tmp_path, _config(width=5, num_train_steps=20))
    message = str(error.value)
    assert "config.model.width: 3 -> 5" in message
    assert "params/kernel: (2, 3) -> (2, 5)" in message
    assert "params/bias: (3,) -> (5,)" in message
    assert "opt_state/1/0/mu/kernel: (2, 3) -> (2, 5)" in message
    assert "num_train_steps" not in message.split("Resume with")[0]
    assert len(message) < 2000
    assert {p.name: p.read_text() for p in tmp_path.glob("*.json")} == before
    # An evaluation with it stops the same way.
    with pytest.raises(run_record.RunMismatchError, match="cannot evaluate it"):
        _check(tmp_path, _config(width=5), write=False)


def test_another_method_stops(tmp_path):
    _trained(tmp_path, _config())
    with pytest.raises(run_record.RunMismatchError, match="method: 'toy' -> 'other'"):
        _check(tmp_path, _config(method="other"))


def test_safe_fields_change_silently(tmp_path, caplog):
    _trained(tmp_path, _config())
    changed = _config(
        num_train_steps=100,
        eval_every_steps=10,
        keep_checkpoints=1,
        **{"data.path": "/data/b", "profile.enabled": True, "distributed.num_processes": 2},
    )
    with caplog.at_level(logging.WARNING):
        _check(tmp_path, changed)
    assert caplog.text == ""
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["config.json", "run_info.json"]


def test_other_fields_warn_and_are_recorded_beside_the_first(tmp_path, caplog):
    _trained(tmp_path, _config())
    original = (tmp_path / "config.json").read_text()
    changed = _config(seed=3, **{"optim.lr": 0.02})
    with caplog.at_level(logging.WARNING):
        _check(tmp_path, changed)
    assert "config.optim.lr: 0.01 -> 0.02" in caplog.text and "config.seed: 0 -> 3" in caplog.text
    assert (tmp_path / "config.json").read_text() == original
    resumed = json.loads((tmp_path / "config_resumed_step_4.json").read_text())
    assert resumed["optim"]["lr"] == 0.02
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the next resume compares with the newest record
        _check(tmp_path, changed)
    assert caplog.text == ""


def test_a_workdir_without_record_is_recorded_on_resume(tmp_path, caplog):
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    _check(tmp_path, _config(), write=False)  # an evaluation only reads
    assert not (tmp_path / "config.json").exists()
    with caplog.at_level(logging.WARNING):
        _check(tmp_path, _config())
    assert "no record of the config" in caplog.text
    assert json.loads((tmp_path / "run_info.json").read_text())["method"] == "toy"


def test_the_issue_examples_stop_at_start(tmp_path):
    """corr_r18:smoke resumed with another key_dim (through `vosjax.main`) or another method."""
    from configs.ino import vits8_davis2016
    from configs.maskvos import corr_r18
    from vosjax import main

    config = corr_r18.get_config("smoke")
    workdir = tmp_path / "work"
    trainer = train.Trainer(config, main.build_method(config))
    run_record.check(workdir, config, trainer.abstract_state, write=True)
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    ino = vits8_davis2016.get_config("smoke")
    with pytest.raises(run_record.RunMismatchError) as error:
        run_record.check(
            workdir, ino, train.Trainer(ino, main.build_method(ino)).abstract_state, write=True
        )
    assert "method: 'maskvos_correspondence' -> 'ino'" in str(error.value)

    cache = tmp_path / "cache"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "vosjax.main",
            "--config=configs/maskvos/corr_r18.py:smoke",
            f"--workdir={workdir}",
            "--config.model.key_dim=16",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, VOSJAX_DATA_DIR=str(cache)),
        timeout=300,
    )
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "config.model.key_dim: 32 -> 16" in process.stderr
    assert "params/key_conv2/kernel: (1, 1, 64, 32) -> (1, 1, 64, 16)" in process.stderr
    assert not cache.exists()  # stopped before any data pipeline (the synthetic videos) was made
    names = sorted(p.name for p in workdir.iterdir())
    assert names == ["checkpoints", "config.json", "run_info.json"]
