"""Released checkpoint layouts (files written by PyTorch, tests/weights/data/) -> state_dicts."""

import collections
import pathlib

import numpy as np
import pytest

from vosjax.weights import checkpoint_files, torch_file

DATA = pathlib.Path(__file__).resolve().parent / "data"
INO = DATA / "ino_checkpoint.pth"


@pytest.fixture(scope="module")
def ino_contents():
    return torch_file.read(INO)


def _expected(name):
    with np.load(DATA / f"{name}_checkpoint_expected.npz") as f:
        return {k: f[k] for k in f.files}


def test_ino_student_by_default(ino_contents):
    released = checkpoint_files.select(ino_contents, "ino", None, str(INO))
    student = ino_contents["student"]
    assert released.key == "student" and released.source == f"{INO}['student']"
    assert len(released.state_dict) == 39 and released.stripped == 39
    assert list(released.state_dict) == [n.removeprefix("module.") for n in student]
    assert list(released.state_dict)[:3] == [
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.pos_embed",
    ]
    assert "headlist.headlist.0.last_layer.weight_v" in released.state_dict
    np.testing.assert_array_equal(
        released.state_dict["backbone.pos_embed"], student["module.backbone.pos_embed"]
    )
    assert released.info["epoch"] == 25
    assert sorted(released.loss_state) == [
        "dino_loss_cls_list.0.center",
        "dino_loss_hw_list.0.center",
    ]
    np.testing.assert_array_equal(
        released.loss_state["dino_loss_hw_list.0.center"],
        ino_contents["dino_loss_hw_list"]["0.center"],
    )
    assert released.info["args"]["arch"] == "vit_small" and released.info["args"]["patch_size"] == 8


def test_ino_teacher_by_key(ino_contents):
    released = checkpoint_files.select(ino_contents, "ino", "teacher", "ckpt.pth")
    assert released.key == "teacher" and released.stripped == 0
    assert list(released.state_dict) == list(ino_contents["teacher"])
    student = checkpoint_files.select(ino_contents, "ino", None, "ckpt.pth").state_dict
    # Different networks: the teacher's values, not the student's.
    assert not np.allclose(released.state_dict["backbone.cls_token"], student["backbone.cls_token"])


def test_absent_key_lists_the_keys(ino_contents):
    with pytest.raises(ValueError, match="no key 'ema'") as error:
        checkpoint_files.select(ino_contents, "ino", "ema", "ckpt.pth")
    message = str(error.value)
    for key in ("'student' (39 tensors)", "'teacher' (39 tensors)", "'optimizer'", "'args'"):
        assert key in message


@pytest.mark.parametrize("key", ["args", "epoch", "optimizer"])
def test_key_without_a_state_dict(ino_contents, key):
    with pytest.raises(ValueError, match=rf"ckpt\.pth\['{key}'\]: .*state_dict"):
        checkpoint_files.select(ino_contents, "ino", key, "ckpt.pth")


def test_dino_plain_backbone():
    released = checkpoint_files.read_released(DATA / "dino_backbone.pth", "ino")
    assert released.key is None and released.stripped == 0 and released.info == {}
    assert released.loss_state == {}
    assert list(released.state_dict)[:2] == ["cls_token", "pos_embed"]
    assert "mask_token" not in released.state_dict
    assert released.state_dict["patch_embed.proj.weight"].shape == (8, 3, 2, 2)
    with pytest.raises(ValueError, match="plain state_dict of 18 tensors.*leave out"):
        checkpoint_files.read_released(DATA / "dino_backbone.pth", "ino", "teacher")


def test_maskvos_model_dict():
    released = checkpoint_files.read_released(DATA / "maskvos_checkpoint.pth", "maskvos")
    expected = _expected("maskvos")
    assert released.key == "model" and released.stripped == 0
    assert released.info == {"score": 0.6755, "epoch": 120}
    names = [k.removeprefix("model/") for k in expected if k.startswith("model/")]
    assert list(released.state_dict) == names
    assert "fast_net.backbone.bn1.num_batches_tracked" in names
    for name in names:
        np.testing.assert_array_equal(released.state_dict[name], expected[f"model/{name}"])
    tracked = released.state_dict["fast_net.backbone.bn1.num_batches_tracked"]
    assert tracked.dtype == np.int64 and tracked.shape == () and tracked == 1
    # The correspondence stage's files have the same wrapper.
    assert (
        checkpoint_files.read_released(
            DATA / "maskvos_checkpoint.pth", "maskvos_correspondence"
        ).state_dict.keys()
        == released.state_dict.keys()
    )


def test_shls_ddp_model_dict():
    released = checkpoint_files.read_released(DATA / "shls_checkpoint.pth", "shls")
    expected = _expected("shls")
    assert released.key == "model" and released.stripped == 8
    assert released.info == {"epoch": 30, "top_iou": 0.71, "global_ite": 12000, "test_ite": 30}
    for name, value in expected.items():
        if name.startswith("model/"):
            short = name.removeprefix("model/module.")
            np.testing.assert_array_equal(released.state_dict[short], value)
    assert list(released.state_dict)[0] == "spx_embedding.feat_extractor.conv1.0.weight"


def test_generic_key_and_no_key():
    w = np.zeros(2, np.float32)
    released = checkpoint_files.select({"state_dict": {"module.a": w}, "epoch": 1}, "ino")
    assert released.key == "state_dict" and list(released.state_dict) == ["a"]
    with pytest.raises(ValueError, match=r"x\.pth: no state_dict under the keys .*'student'.*"):
        checkpoint_files.select({"weights": {"a": w}, "epoch": 1}, "ino", None, "x.pth")
    with pytest.raises(ValueError, match="holds a list"):
        checkpoint_files.select([w], "ino")


def test_module_prefix_collision():
    state = collections.OrderedDict([("module.a", np.zeros(1)), ("a", np.ones(1))])
    with pytest.raises(ValueError, match="'module.a' and 'a' are both 'a'"):
        checkpoint_files.strip_data_parallel(state, "x.pth")
    nested, stripped = checkpoint_files.strip_data_parallel({"module.module.b.module.c": 1})
    assert nested == {"b.module.c": 1} and stripped == 1
