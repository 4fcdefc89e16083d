"""`python -m vosjax.import_weights` on a checkpoint in the released INO layout, then evaluation.

The file (tests/weights/data/ino_checkpoint.pth, written by PyTorch) holds a tiny INO network;
configs/ino/vits8_davis2016.py:smoke with OVERRIDES builds the same network.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs.ino import vits8_davis2016
from vosjax import checkpointing, import_weights, train
from vosjax import main as main_lib
from vosjax.weights import layout, torch_file

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "weights" / "data"
INO = DATA / "ino_checkpoint.pth"
CONFIG = "configs/ino/vits8_davis2016.py:smoke"
OVERRIDES = {
    "model.embed_dim": 8,
    "model.depth": 2,
    "model.num_heads": 2,
    "model.hidden_dim": 8,
    "model.bottleneck_dim": 4,
    "model.out_dim": 8,
    "eval.block": 2,
}
FLAGS = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _config(**fields):
    config = vits8_davis2016.get_config("smoke")
    for path, value in {**OVERRIDES, **fields}.items():
        section, name = path.split(".")
        config[section][name] = value
    return config


def _released_value(path: str, network: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The torch tensor (name, value in vosjax's layout) of the vosjax variable at `path`."""
    net, *rest = path.split("/")
    if net.endswith("_head"):
        prefix = "headlist.headlist.0."
        if rest == ["v"]:
            name = prefix + "last_layer.weight_v"
            return name, layout.linear_kernel(network[name])
        if rest == ["g"]:
            name = prefix + "last_layer.weight_g"
            return name, network[name].reshape(-1)
        _, index, leaf = rest  # mlp/<i>/<kernel|bias>: torch's Sequential puts GELUs between
        name = f"{prefix}mlp.{2 * int(index)}.{'weight' if leaf == 'kernel' else 'bias'}"
        return name, layout.linear_kernel(network[name]) if leaf == "kernel" else network[name]
    module, leaf = ".".join(rest[:-1]), rest[-1]
    if leaf in ("cls_token", "mask_token", "pos_embed"):
        name = f"backbone.{leaf}"
        return name, network[name].reshape(-1, network[name].shape[-1])
    if module == "patch_embed":
        module = "patch_embed.proj"
    name = f"backbone.{module}.{'bias' if leaf == 'bias' else 'weight'}"
    value = network[name]
    if leaf == "kernel":
        value = layout.conv_kernel(value) if value.ndim == 4 else layout.linear_kernel(value)
    return name, value


def _assert_holds(raw: dict, network: dict[str, np.ndarray]) -> None:
    """Every imported variable of a restored INO state equals its tensor in `network`."""
    values = {
        **train.flat_by_path(raw["params"]),
        **train.flat_by_path(raw["model_state"]),
    }
    used = set()
    for path, value in values.items():
        if "/rngs/" in path or path.startswith("center_"):
            continue  # drop-path keys; the centres are not part of a network's state_dict
        name, expected = _released_value(path, network)
        np.testing.assert_array_equal(np.asarray(value), expected, err_msg=f"{path} <- {name}")
        used.add(name)
    assert used == set(network), sorted(set(network) - used)


def _run(tmp_path, module, *args):
    env = dict(os.environ, VOSJAX_DATA_DIR=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=1200,
    )


@pytest.mark.slow
def test_import_then_evaluate(tmp_path):
    workdir = tmp_path / "imported"
    process = _run(
        tmp_path,
        "vosjax.import_weights",
        f"--config={CONFIG}",
        *FLAGS,
        f"--pytorch={INO}",
        f"--workdir={workdir}",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert f"Imported 39 tensors of {INO}['student'] (39 without their 'module.' prefix)" in (
        process.stdout
    )
    assert "saved as step 0 of" in process.stdout
    record = json.loads((workdir / "imported_from.json").read_text())
    assert record["key"] == "student" and record["tensors"] == 39
    assert record["file_info"]["epoch"] == 25

    process = _run(
        tmp_path, "vosjax.main", f"--config={CONFIG}", *FLAGS, f"--workdir={workdir}", "--mode=eval"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((workdir / "eval_results" / "step_0" / "results.json").read_text())
    assert 0.0 <= results["J&F-Mean"] <= 1.0 and len(results["per_object"]) > 0

    with checkpointing.Checkpointer(workdir / "checkpoints", handle_sigterm=False) as saved:
        raw, step = saved.restore_raw()
    assert step == 0 and int(raw["step"]) == 0
    contents = torch_file.read(INO)
    student = {k.removeprefix("module."): v for k, v in contents["student"].items()}
    # Student and teacher networks both hold the student's tensors (INO's converter).
    _assert_holds(raw, student)
    # The released losses' centres come along (what the released training resumes with).
    model_state = train.flat_by_path(raw["model_state"])
    for name, key in (("center_cls", "dino_loss_cls_list"), ("center_patch", "dino_loss_hw_list")):
        expected = contents[key]["0.center"].reshape(-1)
        assert np.any(expected)
        np.testing.assert_array_equal(np.asarray(model_state[name]), expected)


def test_teacher_key_then_init_from(tmp_path):
    config = _config()
    workdir = tmp_path / "teacher"
    imported = import_weights.import_checkpoint(config, INO, workdir, "teacher")
    assert imported.released.key == "teacher" and imported.released.stripped == 0
    assert imported.step == 0 and imported.num_params == 3668
    assert f"Imported 39 tensors of {INO}['teacher']" in imported.summary()
    assert imported.loss_state == ["dino_loss_cls_list.0.center", "dino_loss_hw_list.0.center"]
    teacher = torch_file.read(INO)["teacher"]

    # A new run starting from the imported weights (what the training loop does at step 0).
    config.init_from.workdir = str(workdir)
    trainer = train.Trainer(config, main_lib.build_method(config))
    state = train.init_from_checkpoint(config, trainer, trainer.init_state())
    raw = {"params": state.params, "model_state": state.model_state}
    raw = {k: nnx.to_pure_dict(v) for k, v in raw.items()}
    _assert_holds(raw, teacher)
    centre = torch_file.read(INO)["dino_loss_hw_list"]["0.center"].reshape(-1)
    np.testing.assert_array_equal(np.asarray(raw["model_state"]["center_patch"]), centre)
    # A fresh optimiser state: Adam's moments at zero.
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert moments and all(not np.any(np.asarray(m)) for m in moments)

    with pytest.raises(FileExistsError, match=r"already holds checkpoints \(steps \[0\]\)"):
        import_weights.import_checkpoint(config, INO, workdir, "teacher")


def test_wrong_network_names_the_tensor(tmp_path):
    config = _config(**{"model.embed_dim": 16})
    with pytest.raises(layout.WeightImportError, match=r"ino_checkpoint\.pth\['student'\].*shape"):
        import_weights.import_checkpoint(config, INO, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_method_without_released_checkpoints(tmp_path):
    from configs.maskvos import corr_r18

    with pytest.raises(ValueError, match="maskvos_correspondence.*'ino', 'maskvos', 'shls'"):
        import_weights.import_checkpoint(corr_r18.get_config("smoke"), INO, tmp_path / "w")


def test_dino_backbone_file(tmp_path):
    # DINO's released backbone files: a plain ViT state_dict (here 1 block, patch 2, 4 x 4 grid).
    config = _config(**{"model.depth": 1, "model.patch_size": 2, "model.pos_embed_size": 8})
    imported = import_weights.import_checkpoint(config, DATA / "dino_backbone.pth", tmp_path / "w")
    assert imported.released.key is None and len(imported.released.state_dict) == 18
    assert imported.loss_state == []
    with checkpointing.Checkpointer(tmp_path / "w" / "checkpoints", handle_sigterm=False) as saved:
        raw, _ = saved.restore_raw()
    dino = torch_file.read(DATA / "dino_backbone.pth")
    params = train.flat_by_path(raw["params"])
    np.testing.assert_array_equal(params["student/cls_token"], dino["cls_token"].reshape(1, 8))
    np.testing.assert_array_equal(
        params["student/patch_embed/kernel"], layout.conv_kernel(dino["patch_embed.proj.weight"])
    )
    teacher = train.flat_by_path(raw["model_state"])["teacher/blocks/0/mlp/fc2/kernel"]
    np.testing.assert_array_equal(teacher, layout.linear_kernel(dino["blocks.0.mlp.fc2.weight"]))
