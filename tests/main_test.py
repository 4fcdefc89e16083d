"""`python -m vosjax.main` end to end: every :smoke config trains 2 steps and evaluates."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import psutil
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _main(tmp_path, *args):
    env = dict(os.environ, VOSJAX_DATA_DIR=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "vosjax.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        "configs/maskvos/corr_r18.py",
        "configs/maskvos/corr_r50.py",
        "configs/maskvos/r18.py",  # r50.py's full method: method_test (by eval_shape)
        "configs/ino/vits8_davis2016.py",
        "configs/shls/msra10k.py",
    ],
)
def test_smoke_trains_evaluates_and_resumes(tmp_path, config):
    workdir = tmp_path / "work"
    process = _main(tmp_path, f"--config={config}:smoke", f"--workdir={workdir}")
    assert process.returncode == 0, process.stderr[-3000:]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]
    results = json.loads((workdir / "eval_results" / "step_2" / "results.json").read_text())
    assert 0.0 <= results["J&F-Mean"] <= 1.0
    assert len(results["per_object"]) > 0
    assert list(workdir.glob("events.out.tfevents.*"))
    if config.endswith("/r18.py"):
        # The full method: pseudo masks made at step 0 and re-made at step 1 (one folder per
        # training video), evaluated by mask decoding.
        assert "Round starting at step 1" in process.stderr
        for step in (0, 1):
            masks = workdir / "pseudo_masks" / f"step_{step}"
            assert (masks / "meta.json").is_file()
            assert len([p for p in masks.iterdir() if p.is_dir()]) == 4
    if config.endswith("r50.py") or config.endswith("/r18.py"):
        return  # resuming and evaluating are the same code for all; corr_r18, INO (its EMA
        # teacher and centres are model state that must come back) and SHLS (still images
        # through its own loader) resume.

    # The same command with a longer schedule resumes at step 2, not from scratch.
    process = _main(
        tmp_path, f"--config={config}:smoke", f"--workdir={workdir}", "--config.num_train_steps=3"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Training from step 2 to 3" in process.stderr
    assert (workdir / "eval_results" / "step_3" / "results.json").is_file()

    if "shls" in config:
        return  # restoring a saved step for --mode=eval is the same code for every method
    # Evaluating a saved step restores it; INO's evaluation goes to its own --eval_dir and
    # leaves the workdir's results and summaries as they were.
    eval_dir = tmp_path / "eval_elsewhere"
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    extra = [f"--eval_dir={eval_dir}"] if "ino" in config else []
    process = _main(
        tmp_path,
        f"--config={config}:smoke",
        f"--workdir={workdir}",
        "--mode=eval",
        "--step=1",
        *extra,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    if not extra:
        assert (workdir / "eval_results" / "step_1" / "results.json").is_file()
        return
    results = json.loads((eval_dir / "step_1" / "results.json").read_text())
    assert 0.0 <= results["J&F-Mean"] <= 1.0
    assert list(eval_dir.glob("events.out.tfevents.*"))
    assert not (workdir / "eval_results" / "step_1").exists()
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    assert after == before


def test_missing_data_path_names_the_field(tmp_path):
    process = _main(
        tmp_path,
        "--config=configs/maskvos/corr_r18.py:smoke",
        f"--workdir={tmp_path / 'work'}",
        f"--config.data.path={tmp_path / 'nowhere'}",
    )
    assert process.returncode != 0
    assert "config.data.path" in process.stderr


def test_unknown_config_field_is_refused(tmp_path):
    process = _main(
        tmp_path,
        "--config=configs/maskvos/corr_r18.py:smoke",
        f"--workdir={tmp_path / 'work'}",
        "--config.optim.learning_rate=0.1",
    )
    assert process.returncode != 0
    assert "learning_rate" in process.stderr


def test_davis_clips_mixed_with_synthetic_clips(monkeypatch, tmp_path, davis2016_root):
    from configs.maskvos import corr_r18
    from vosjax import main
    from vosjax.methods.maskvos import correspondence

    monkeypatch.setenv("VOSJAX_DATA_DIR", str(tmp_path / "cache"))
    config = corr_r18.get_config("smoke")
    config.data.synthetic_mix = 0.5
    method = correspondence.Correspondence(config)
    with pytest.raises(ValueError, match="config.data.synthetic_mix=0.5 needs config.data.path"):
        main.data_iterator_factory(config, method)
    config.data.path = str(davis2016_root)
    config.data.resolution = "240p"
    config.data.synthetic_mix = 1.5
    with pytest.raises(ValueError, match="config.data.synthetic_mix=1.5"):
        main.data_iterator_factory(config, method)
    config.data.synthetic_mix = 0.2
    iterator = main.data_iterator_factory(config, method)(config.batch_size)
    batches = [next(iterator) for _ in range(4)]
    assert batches[0]["video"].shape == (8, 3, 64, 64, 3)
    # 30 DAVIS videos x 1 and 4 synthetic ones x 2: mix indices 30..37 are synthetic. The first
    # 32 examples are 32 distinct videos of the shuffled 38, so 2 to 8 of them are synthetic.
    indices = np.concatenate([np.asarray(b["video_index"]) for b in batches])
    assert len(set(indices.tolist())) == 32 and ((indices >= 0) & (indices < 38)).all()
    assert 2 <= np.sum(indices >= 30) <= 8


def test_maskvos_configs_hold_the_paper_and_code_settings():
    from configs.maskvos import davis2016, r18

    config = r18.get_config()
    assert config.method == "maskvos" and config.batch_size == 12
    assert config.clustering.num_clusters == 5 and config.clustering.position_dim == 24
    # Re-clustering every 10 epochs of YouTube-VOS (94,588 frames at batch 12).
    assert config.schedule.update_every == 10 * (94_588 // 12)
    assert config.eval.decoding.refine_rounds == 3 and config.eval.decoding.top_k == 10
    code = r18.get_config("code")
    assert code.clustering.num_clusters == 7 and code.clustering.fit_every == 8
    assert code.loss.coarse == "argmax" and code.eval.decoding.mix_coarse
    # The released backbone (res4's down_dim4 included) runs under torch.no_grad().
    assert tuple(code.optim.frozen) == (
        "encoder/backbone",
        "encoder/down_conv",
        "encoder/down_norm",
    )
    davis = davis2016.get_config()
    assert davis.data.path.endswith("DAVIS2016") and davis.data.resolution == "240p"
    assert davis.steps_per_epoch == 2_079 // 12
    assert davis.schedule.update_every == 10 * davis.steps_per_epoch
    assert davis.eval.imageset == "2016/val"


def test_evaluation_checks_its_folders_and_the_lock_before_any_work(monkeypatch, tmp_path):
    from vosjax import main, train, workdir_lock
    from vosjax.data import image_io

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(train, "Trainer", no_work)
    # A folder that even root cannot write (the tests may run as root).
    with pytest.raises(main.UnwritableError, match=r"/sys/kernel: .*pass --eval_dir=E"):
        main.evaluate_workdir(None, "/sys/kernel", None, None, None)
    with pytest.raises(main.UnwritableError, match=r"choose another --eval_dir"):
        main.evaluate_workdir(None, str(tmp_path), None, None, "/sys/kernel/results")
    # A read-only mount: creating the probe file fails with EROFS.
    (tmp_path / "eval_results").mkdir()

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    with monkeypatch.context() as patch:
        patch.setattr(image_io.tempfile, "mkstemp", read_only)
        with pytest.raises(main.UnwritableError, match="Read-only file system.*--eval_dir=E"):
            main.evaluate_workdir(None, str(tmp_path), None, None, None)
    # Beside a training run (this process holds the lock as another would): refused without
    # --eval_dir, allowed with it (no lock taken).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        workdir_lock.lock_path(tmp_path).write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": sleeper.pid,
                    "process_start_time": psutil.Process(sleeper.pid).create_time(),
                }
            )
        )
        with pytest.raises(workdir_lock.WorkdirLockedError, match="pass --eval_dir=E"):
            main.evaluate_workdir(None, str(tmp_path), None, None, None)
        with pytest.raises(AssertionError, match="the evaluation started"):
            main.evaluate_workdir(None, str(tmp_path), None, None, str(tmp_path / "elsewhere"))
        assert (tmp_path / "elsewhere").is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
