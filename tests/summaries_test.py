"""Summaries without TensorFlow: the log and metrics.jsonl instead of TensorBoard."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from vosjax import summaries

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_jsonl_writer_appends_one_object_per_write(tmp_path):
    writer = summaries.JsonlWriter(tmp_path / "run")
    writer.write_scalars(3, {"train/loss": 1.5, "train/acc": 0.25})
    writer.write_images(3, {"overlay": None})  # dropped without TensorBoard
    writer.write_scalars(4, {"train/loss": 1.25})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 3, "train/loss": 1.5, "train/acc": 0.25},
        {"step": 4, "train/loss": 1.25},
    ]
    summaries.JsonlWriter(tmp_path / "other", just_logging=True).write_scalars(1, {"x": 1.0})
    assert not (tmp_path / "other").exists()


def test_progress_reports_the_rate_and_the_timed_parts(tmp_path):
    writer = summaries.JsonlWriter(tmp_path)
    progress = summaries.Progress(num_train_steps=10, writer=writer, every_secs=3600.0)
    progress(1)  # the first step (compilation) starts the clock
    with progress.timed("eval"):
        pass
    progress(5)  # not yet: every_secs has not passed
    progress(10)  # the last step always reports
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["step"] == 10 and record["steps_per_sec"] > 0 and record["uptime"] >= 0


def test_tensorflow_blocked_means_no_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    assert not summaries.has_tensorboard()


@pytest.mark.slow
def test_main_trains_and_evaluates_without_tensorflow(tmp_path, davis2016_root):
    """A machine without TensorFlow (or TensorFlow Datasets) trains on DAVIS and evaluates."""
    workdir = tmp_path / "work"
    flags = [
        "--config=configs/maskvos/corr_r18.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.path={davis2016_root}",
        "--config.data.imageset=2016/train",
        "--config.data.resolution=240p",
        f"--config.eval.davis_root={davis2016_root}",
        "--config.eval.imageset=2016/train",  # its shortest video, at 240p: a quick evaluation
        "--config.eval.resolution=240p",
        "--config.eval.sequences=dog-agility",
    ]
    script = (
        "import runpy, sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None;"
        "sys.argv = ['vosjax.main'] + sys.argv[1:]; runpy.run_module('vosjax.main', "
        "run_name='__main__')"
    )

    def run(*extra):
        process = subprocess.run(
            [sys.executable, "-c", script, *flags, *extra],
            capture_output=True, text=True, cwd=REPO, timeout=600,
            env=dict(os.environ, VOSJAX_DATA_DIR=str(tmp_path / "cache")),
        )  # fmt: skip
        assert process.returncode == 0, process.stderr[-3000:]
        return process

    # -1: train only, so no evaluation data is read.
    process = run("--config.eval_every_steps=-1")
    assert "TensorFlow is not installed" in process.stderr
    assert (workdir / "checkpoints" / "2").is_dir() and not (workdir / "eval_results").exists()
    assert not list(workdir.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in losses] == [1, 2]  # the smoke config logs every step
    run("--mode=eval")
    results = json.loads((workdir / "eval_results" / "step_2" / "results.json").read_text())
    assert [k for k in results["per_object"]] == ["dog-agility_1"]
    eval_records = (workdir / "metrics.jsonl").read_text().splitlines()[len(records) :]
    assert any("eval/J&F-Mean" in json.loads(line) for line in eval_records)
