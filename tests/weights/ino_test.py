"""vosjax.weights.ino: released INO networks and DINO backbones -> INOModel (student + teacher)."""

import ml_collections
import numpy as np
import pytest
from flax import nnx

from tests.weights import vit_test
from vosjax.methods.ino import head as head_lib
from vosjax.methods.ino import model as model_lib
from vosjax.weights import ino, layout


def _model() -> model_lib.INOModel:
    config = ml_collections.ConfigDict(
        {
            "backbone": "vit_small",
            "patch_size": vit_test.PATCH,
            "pos_embed_size": vit_test.GRID * vit_test.PATCH,
            "drop_path": 0.1,
            "embed_dim": vit_test.DIM,
            "depth": vit_test.DEPTH,
            "num_heads": vit_test.HEADS,
            "hidden_dim": 5,
            "bottleneck_dim": 3,
            "out_dim": 6,
            "head_layers": 3,
            "norm_last_layer": True,
        }
    )
    return model_lib.INOModel(config, rngs=nnx.Rngs(0))


def _ino_state(**kwargs) -> dict[str, np.ndarray]:
    """An INO student / teacher state_dict after `module.` is stripped."""
    return vit_test.vit_state("backbone.", **kwargs) | vit_test.head_state("headlist.headlist.0.")


def _flat(module: nnx.Module, *filters) -> dict[str, np.ndarray]:
    state = nnx.state(module, *filters) if filters else nnx.state(module)
    return {
        "/".join(map(str, path)): np.asarray(value[...])
        for path, value in nnx.to_flat_state(state)
        if "rngs" not in map(str, path)
    }


def test_ino_layout_fills_student_and_teacher_with_the_same_weights():
    state = _ino_state()
    model = _model()
    ino.import_released(model, state, "ino.pth['student']")
    np.testing.assert_array_equal(model.student.mask_token[...], state["backbone.mask_token"][0])
    np.testing.assert_array_equal(
        model.student.blocks[0].attn.proj.kernel[...], state["backbone.blocks.0.attn.proj.weight"].T
    )
    np.testing.assert_array_equal(
        model.student_head.g[...], state["headlist.headlist.0.last_layer.weight_g"][:, 0]
    )
    student = _flat(model.student, nnx.Param)
    teacher = _flat(model.teacher, model_lib.Teacher)
    assert student.keys() == teacher.keys() and len(student) > 10
    for name, value in student.items():
        np.testing.assert_array_equal(teacher[name], value, err_msg=name)
    head_s = _flat(model.student_head, nnx.Any(nnx.Param, head_lib.FixedScale))
    head_t = _flat(model.teacher_head, nnx.Any(model_lib.Teacher, head_lib.FixedScale))
    layers = {f"mlp/{i}/{leaf}" for i in range(3) for leaf in ("kernel", "bias")}
    assert head_s.keys() == head_t.keys() == layers | {"v", "g"}
    for name, value in head_s.items():
        np.testing.assert_array_equal(head_t[name], value, err_msg=name)
    # The teacher's weights stay out of the optimiser's reach.
    assert not _flat(model.teacher, nnx.Param)


def test_plain_dino_backbone_fills_the_vits_only():
    state = vit_test.vit_state(mask_token=False)  # DINO's released backbone file
    model = _model()
    head_before = _flat(model.student_head)
    ino.import_released(model, state, "dino.pth")
    np.testing.assert_array_equal(model.student.cls_token[...], state["cls_token"][0])
    np.testing.assert_array_equal(model.teacher.cls_token[...], state["cls_token"][0])
    np.testing.assert_array_equal(model.student.mask_token[...], 0.0)  # DINO has none
    for name, value in _flat(model.student_head).items():
        np.testing.assert_array_equal(value, head_before[name], err_msg=name)


def test_dino_full_checkpoint_head_is_read_from_head_prefix():
    state = vit_test.vit_state("backbone.", mask_token=False) | vit_test.head_state("head.")
    assert ino.detect_layout(state) == ("backbone.", "head.")
    model = _model()
    ino.import_released(model, state)
    np.testing.assert_array_equal(model.teacher_head.v[...], state["head.last_layer.weight_v"].T)


def test_layouts_are_detected():
    assert ino.detect_layout(_ino_state()) == ("backbone.", "headlist.headlist.0.")
    assert ino.detect_layout(vit_test.vit_state()) == ("", None)
    with pytest.raises(layout.WeightImportError, match=r"strip the DataParallel 'module\.'"):
        ino.detect_layout({"module." + k: v for k, v in _ino_state().items()})


def test_unexpected_missing_and_misshaped_tensors_are_named():
    state = _ino_state() | {"headlist.headlist.1.mlp.0.weight": np.zeros((5, 8), np.float32)}
    with pytest.raises(layout.WeightImportError, match=r"ino\.pth: 1 unexpected.*headlist\.1"):
        ino.import_released(_model(), state, "ino.pth")
    state = _ino_state()
    del state["headlist.headlist.0.mlp.2.bias"]
    with pytest.raises(
        layout.WeightImportError, match=r"missing tensor 'headlist\.headlist\.0\.mlp\.2\.bias'"
    ):
        ino.import_released(_model(), state, "ino.pth")
    state = _ino_state()
    state["backbone.norm.weight"] = np.zeros(9, np.float32)
    with pytest.raises(layout.WeightImportError, match=r"'backbone\.norm\.weight'.*\(9,\).*\(8,\)"):
        ino.import_released(_model(), state, "ino.pth")


def test_a_different_position_grid_asks_for_the_matching_config():
    # Written checkpoints must restore into the model the config builds: no silent adoption.
    with pytest.raises(layout.WeightImportError, match=r"config\.model\.pos_embed_size=16"):
        ino.import_released(_model(), _ino_state(grid=4), "dino.pth")
