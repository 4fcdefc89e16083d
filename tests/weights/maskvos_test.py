"""Tests of the released Mask-VOS FrameworkMask import (vosjax/weights/maskvos.py)."""

import json

import numpy as np
import pytest
from flax import nnx

from configs.maskvos import r50
from tests import conftest
from vosjax.methods.maskvos import method
from vosjax.weights import layout
from vosjax.weights import maskvos as maskvos_weights

MANIFEST = conftest.GOLDEN / "reference" / "maskvos" / "encoder_r50" / "case.json"


def _released_state_dict() -> dict[str, np.ndarray]:
    """Random tensors with the released FrameworkMask's names and shapes (598 entries)."""
    manifest = json.loads(MANIFEST.read_text())["manifest"]
    rng = np.random.default_rng(0)
    return {
        name: (
            np.zeros(shape, np.int64)
            if name.endswith("num_batches_tracked")
            else rng.standard_normal(shape).astype(np.float32)
        )
        for name, shape, *_ in manifest
    }


@pytest.fixture(scope="module")
def model_and_weights():
    if not MANIFEST.is_file():
        pytest.skip(f"{MANIFEST} not present")
    config = r50.get_config("code")
    model = method.MaskVOS(config).build_model(config, nnx.Rngs(0))
    return model, _released_state_dict()


def test_every_tensor_lands_in_its_place(model_and_weights):
    model, sd = model_and_weights
    maskvos_weights.import_released(model, sd, "released.pth")
    conv = lambda name: sd[name].transpose(2, 3, 1, 0)  # noqa: E731
    enc, v, d = model.encoder, model.head.value_encoder, model.head.decoder
    np.testing.assert_array_equal(
        enc.down_conv.bias[...], sd["fast_net.backbone.down_dim4.block.0.bias"]
    )
    np.testing.assert_array_equal(enc.key_norm.var[...], sd["fast_net.emb_q.bn1.running_var"])
    np.testing.assert_array_equal(
        enc.f2_conv.kernel[...], conv("fast_net.down_dim2.block.0.weight")
    )
    np.testing.assert_array_equal(
        v.backbone.conv1.bias[...], sd["mask_encoder.backbone.conv1.bias"]
    )
    np.testing.assert_array_equal(
        v.project.kernel[...], conv("mask_encoder.backbone.down_dim.weight")
    )
    np.testing.assert_array_equal(
        v.fuser.attention.mlp2.kernel[...],
        sd["mask_encoder.fuser.attention.ChannelGate.mlp.3.weight"].T,
    )
    np.testing.assert_array_equal(
        v.fuser.block1.shortcut.kernel[...], conv("mask_encoder.fuser.block1.downsample.weight")
    )
    np.testing.assert_array_equal(d.skip2.kernel[...], conv("decoder.up_8_4.skip_conv.weight"))
    np.testing.assert_array_equal(
        d.block3.conv2.bias[...], sd["decoder.up_16_8.out_conv.conv2.bias"]
    )
    np.testing.assert_array_equal(d.pred.kernel[...], conv("decoder.pred.weight"))


def test_errors_name_the_tensor(model_and_weights):
    model, sd = model_and_weights
    missing = {k: v for k, v in sd.items() if k != "decoder.up_8_4.out_conv.downsample.bias"}
    with pytest.raises(layout.WeightImportError, match=r"up_8_4\.out_conv\.downsample\.bias"):
        maskvos_weights.import_released(model, missing, "released.pth")
    extra = dict(sd, **{"decoder.extra.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(layout.WeightImportError, match=r"released\.pth.*decoder\.extra\.weight"):
        maskvos_weights.import_released(model, extra, "released.pth")
    shaped = dict(sd, **{"mask_encoder.backbone.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(layout.WeightImportError) as info:
        maskvos_weights.import_released(model, shaped, "released.pth")
    assert "mask_encoder.backbone.conv1.weight" in str(info.value)
    assert "(7, 7, 3, 64)" in str(info.value) and "(7, 7, 4, 64)" in str(info.value)
    # emb_v is skipped on purpose: without it the import still succeeds.
    no_emb_v = {k: v for k, v in sd.items() if not k.startswith("fast_net.emb_v.")}
    maskvos_weights.import_released(model, no_emb_v, "released.pth")
