"""Tests of the torchvision ResNet state_dict import (vosjax/weights/resnet.py)."""

import jax
import numpy as np
import pytest
from flax import nnx

from vosjax.models import resnet
from vosjax.weights import layout
from vosjax.weights import resnet as resnet_weights


def _bn(sd: dict, name: str, c: int, rng: np.random.Generator) -> None:
    sd[f"{name}.weight"] = 1.0 + 0.1 * rng.standard_normal(c).astype(np.float32)
    sd[f"{name}.bias"] = 0.1 * rng.standard_normal(c).astype(np.float32)
    sd[f"{name}.running_mean"] = 0.1 * rng.standard_normal(c).astype(np.float32)
    sd[f"{name}.running_var"] = (0.5 + rng.random(c)).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)


def _conv(sd: dict, name: str, o: int, i: int, k: int, rng: np.random.Generator) -> None:
    sd[f"{name}.weight"] = (rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)).astype(
        np.float32
    )


def torchvision_resnet18(
    prefix: str = "", num_stages: int = 4, num_classes: int | None = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """A torchvision-named ResNet-18 state_dict (names and OIHW shapes as torchvision's)."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    _conv(sd, f"{prefix}conv1", 64, 3, 7, rng)
    _bn(sd, f"{prefix}bn1", 64, rng)
    in_c = 64
    for i in range(num_stages):
        planes = 64 * 2**i
        for j in range(2):
            name = f"{prefix}layer{i + 1}.{j}"
            _conv(sd, f"{name}.conv1", planes, in_c if j == 0 else planes, 3, rng)
            _bn(sd, f"{name}.bn1", planes, rng)
            _conv(sd, f"{name}.conv2", planes, planes, 3, rng)
            _bn(sd, f"{name}.bn2", planes, rng)
            if j == 0 and i > 0:
                _conv(sd, f"{name}.downsample.0", planes, in_c, 1, rng)
                _bn(sd, f"{name}.downsample.1", planes, rng)
        in_c = planes
    if num_classes:
        sd[f"{prefix}fc.weight"] = rng.standard_normal((num_classes, in_c)).astype(np.float32)
        sd[f"{prefix}fc.bias"] = rng.standard_normal(num_classes).astype(np.float32)
    return sd


@pytest.fixture(scope="module")
def state_dict():
    return torchvision_resnet18(prefix="fast_net.backbone.")


def test_import_maps_every_tensor_in_its_layout(state_dict):
    model = resnet.resnet18(num_classes=10, rngs=nnx.Rngs(0))
    resnet_weights.import_torchvision(model, state_dict, prefix="fast_net.backbone.")
    p = "fast_net.backbone."
    w = state_dict[f"{p}layer2.0.conv1.weight"]
    np.testing.assert_array_equal(model.layers[1][0].conv1.kernel[...], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        model.layers[3][0].downsample.norm.var[...],
        state_dict[f"{p}layer4.0.downsample.1.running_var"],
    )
    np.testing.assert_array_equal(model.head.kernel[...], state_dict[f"{p}fc.weight"].T)
    np.testing.assert_array_equal(model.norm1.scale[...], state_dict[f"{p}bn1.weight"])


@pytest.mark.parametrize("norm", ["batch", "frozen_batch"])
def test_known_answer_stem(state_dict, norm):
    """One stem output pixel: relu(BN_eval(conv7x7/2 with torch's symmetric padding))."""
    model = resnet.resnet18(num_classes=10, norm=norm, rngs=nnx.Rngs(0))
    resnet_weights.import_torchvision(model, state_dict, prefix="fast_net.backbone.")
    p = "fast_net.backbone."
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 16, 16, 3)), np.float64)
    stem = np.asarray(model(x.astype(np.float32))["stem"])
    xp = np.pad(x[0], ((3, 3), (3, 3), (0, 0)))
    w = state_dict[f"{p}conv1.weight"].astype(np.float64)  # [O, I, 7, 7]
    for r, c in [(0, 0), (3, 5), (7, 7)]:
        patch = xp[2 * r : 2 * r + 7, 2 * c : 2 * c + 7]  # [7, 7, 3]
        conv = np.einsum("hwi,oihw->o", patch, w)
        bn = (conv - state_dict[f"{p}bn1.running_mean"]) / np.sqrt(
            state_dict[f"{p}bn1.running_var"] + 1e-5
        ) * state_dict[f"{p}bn1.weight"] + state_dict[f"{p}bn1.bias"]
        np.testing.assert_allclose(stem[0, r, c], np.maximum(bn, 0.0), rtol=1e-4, atol=1e-4)


def test_missing_tensor_is_named(state_dict):
    model = resnet.resnet18(num_classes=10, rngs=nnx.Rngs(0))
    broken = dict(state_dict)
    del broken["fast_net.backbone.layer3.1.bn2.running_mean"]
    with pytest.raises(layout.WeightImportError, match=r"layer3\.1\.bn2\.running_mean"):
        resnet_weights.import_torchvision(model, broken, prefix="fast_net.backbone.")


def test_wrong_shape_names_the_tensor_and_both_shapes(state_dict):
    model = resnet.resnet18(num_classes=10, rngs=nnx.Rngs(0))
    broken = dict(state_dict)
    broken["fast_net.backbone.layer1.0.conv2.weight"] = np.zeros((64, 32, 3, 3), np.float32)
    with pytest.raises(layout.WeightImportError) as info:
        resnet_weights.import_torchvision(model, broken, prefix="fast_net.backbone.")
    message = str(info.value)
    assert "layer1.0.conv2.weight" in message
    assert "(3, 3, 32, 64)" in message and "(3, 3, 64, 64)" in message


def test_extra_tensors_fail_unless_skipped():
    """A 3-stage headless model: layer4 and fc are an error unless the caller skips them."""
    sd = torchvision_resnet18()
    model = resnet.resnet18(num_stages=3, output_stride=8, rngs=nnx.Rngs(0))
    with pytest.raises(layout.WeightImportError, match=r"unexpected.*layer4\.0\.conv1\.weight"):
        resnet_weights.import_torchvision(model, sd, source="r18.pth")
    resnet_weights.import_torchvision(model, sd, skip=("layer4", "fc"), source="r18.pth")
    np.testing.assert_array_equal(
        model.layers[2][1].conv2.kernel[...], sd["layer3.1.conv2.weight"].transpose(2, 3, 1, 0)
    )
    with pytest.raises(layout.WeightImportError, match=r"unexpected.*fc\.weight"):
        resnet_weights.import_torchvision(model, sd, skip=("layer4",))


def test_stem_bias_and_group_norm():
    sd = torchvision_resnet18(num_stages=1, num_classes=None)
    biased = resnet.resnet18(num_stages=1, stem_bias=True, rngs=nnx.Rngs(0))
    with pytest.raises(layout.WeightImportError, match=r"missing tensor 'conv1\.bias'"):
        resnet_weights.import_torchvision(biased, sd)
    sd["conv1.bias"] = np.arange(64, dtype=np.float32)
    resnet_weights.import_torchvision(biased, sd)
    np.testing.assert_array_equal(biased.conv1.bias[...], np.arange(64))
    plain = resnet.resnet18(num_stages=1, rngs=nnx.Rngs(0))
    with pytest.raises(layout.WeightImportError, match="conv1.bias"):
        resnet_weights.import_torchvision(plain, sd)
    del sd["conv1.bias"]
    grouped = resnet.resnet18(num_stages=1, norm="group", rngs=nnx.Rngs(0))
    with pytest.raises(layout.WeightImportError, match="GroupNorm"):
        resnet_weights.import_torchvision(grouped, sd)
