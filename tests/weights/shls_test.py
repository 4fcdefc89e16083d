"""The released SHLS My_Net state_dict -> SHLSModel: every tensor placed, strict errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.shls import base
from vosjax.methods.shls import method
from vosjax.weights import layout, shls


def _config():
    return base.get_config("smoke")  # width 8, blocks 1-1-1-1, dim 8, hidden 16, gate 8


def _zero_model(config):
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: method.SHLS(config).build_model(config, nnx.Rngs(0)))
    )
    state = jax.tree.map(lambda x: jnp.full(x.shape, np.nan, x.dtype), state)
    return nnx.merge(graphdef, state)


def _released_state(config, seed=0) -> dict[str, np.ndarray]:
    """A My_Net state_dict of the config's sizes, with the released names and shapes."""
    m = config.model
    w, dim, hid, gate = m.width, m.superfeature_dim, m.hidden, m.gate_hidden
    l1, l4 = w + 3, 4 * w + 3
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def conv(prefix, cout, cin, k, bias=True):
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (cout,)

    def block(prefix, cin, cout, stride):
        conv(f"{prefix}.left.0", cout, cin, 3, bias=False)
        bn(f"{prefix}.left.1", cout)
        conv(f"{prefix}.left.3", cout, cout, 3, bias=False)
        bn(f"{prefix}.left.4", cout)
        if stride != 1 or cin != cout:
            conv(f"{prefix}.shortcut.0", cout, cin, 1, bias=False)
            bn(f"{prefix}.shortcut.1", cout)

    def res(prefix, c):
        for part in ("conv1", "conv2"):
            conv(f"{prefix}.{part}.0", c, c, 3)
            bn(f"{prefix}.{part}.1", c)

    pre = "spx_embedding.feat_extractor"
    conv(f"{pre}.conv1.0", w, 3, 7, bias=False)
    bn(f"{pre}.conv1.1", w)
    cin = w
    for i, (cout, stride) in enumerate(zip((w, 2 * w, 4 * w, 4 * w), (1, 2, 1, 1), strict=True)):
        for j in range(m.blocks[i]):
            block(f"{pre}.layer{i + 1}.{j}", cin, cout, stride if j == 0 else 1)
            cin = cout
    conv("mem_select.convAM", gate, 4, 3)
    conv("mem_select.convL2", gate, l1, 3)
    conv("mem_select.gate", l4, gate, 3)
    block("segmenter.layer2.0", l1 + 2, hid // 2, 2)
    block("segmenter.layer2.1", hid // 2, hid // 2, 1)
    conv("segmenter.convFM", hid, 3 * l4, 3)
    res("segmenter.res_L4", hid)
    for name, cin in (("RF2", hid // 2), ("RF1", l1 + 2 + 4)):
        conv(f"segmenter.{name}.convFS", hid, cin, 3)
        res(f"segmenter.{name}.ResFS", hid)
        res(f"segmenter.{name}.ResMM", hid)
    conv("segmenter.pred", 2, hid, 3)
    shapes["sf_head_L1.0.weight"], shapes["sf_head_L1.0.bias"] = (dim, l1), (dim,)
    bn("sf_head_L1.1", 1)
    shapes["sf_head_L4.0.weight"], shapes["sf_head_L4.0.bias"] = (dim, l4), (dim,)
    bn("sf_head_L4.1", 1)
    conv("sf_conv_1x1.0", 1, 2, 1)
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(7, np.int64)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[name] = rng.normal(size=shape).astype(np.float32)
    return state


def test_every_variable_is_filled_and_placed():
    config = _config()
    model = _zero_model(config)
    state = _released_state(config)
    shls.import_released(model, state, "my_net.pth")
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    bb = model.backbone
    np.testing.assert_array_equal(
        bb.layers[1][0].conv1.kernel[...],
        state["spx_embedding.feat_extractor.layer2.0.left.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        bb.layers[2][0].downsample.norm.var[...],
        state["spx_embedding.feat_extractor.layer3.0.shortcut.1.running_var"],
    )
    head = model.superfeatures
    np.testing.assert_array_equal(head.l4_proj.kernel[...], state["sf_head_L4.0.weight"].T)
    np.testing.assert_array_equal(head.l1_norm.mean[...], state["sf_head_L1.1.running_mean"])
    np.testing.assert_array_equal(
        head.fuse.kernel[...].reshape(2), state["sf_conv_1x1.0.weight"].reshape(2)
    )
    np.testing.assert_array_equal(model.mem_select.gate.bias[...], state["mem_select.gate.bias"])
    seg = model.segmenter
    np.testing.assert_array_equal(
        seg.rf1.res_mm.conv2.norm.scale[...], state["segmenter.RF1.ResMM.conv2.1.weight"]
    )
    np.testing.assert_array_equal(
        seg.layer2[0].downsample.conv.kernel[...],
        state["segmenter.layer2.0.shortcut.0.weight"].transpose(2, 3, 1, 0),
    )


def test_imported_head_computes_the_released_superfeature():
    config = _config()
    model = _zero_model(config)
    state = _released_state(config, seed=1)
    shls.import_released(model, state)
    rng = np.random.default_rng(2)
    l1 = rng.normal(size=(1, 3, config.model.width + 3)).astype(np.float32)
    l4 = rng.normal(size=(1, 3, 4 * config.model.width + 3)).astype(np.float32)
    ones = jnp.ones((1, 3), bool)
    out = model.superfeatures(jnp.asarray(l1), jnp.asarray(l4), ones, ones)

    def branch(x, name):  # torch: Linear, BatchNorm1d(1) (eval), ReLU
        y = x @ state[f"{name}.0.weight"].T + state[f"{name}.0.bias"]
        mean, var = state[f"{name}.1.running_mean"], state[f"{name}.1.running_var"]
        y = (y - mean) / np.sqrt(var + 1e-5) * state[f"{name}.1.weight"] + state[f"{name}.1.bias"]
        return np.maximum(y, 0)

    weight = state["sf_conv_1x1.0.weight"].reshape(2)
    expected = np.maximum(
        weight[0] * branch(l1, "sf_head_L1")
        + weight[1] * branch(l4, "sf_head_L4")
        + state["sf_conv_1x1.0.bias"],
        0,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_missing_extra_and_misshaped_tensors_are_named():
    config = _config()
    state = _released_state(config)
    missing = dict(state)
    del missing["segmenter.RF2.convFS.bias"]
    with pytest.raises(layout.WeightImportError, match="segmenter.RF2.convFS.bias"):
        shls.import_released(_zero_model(config), missing, "ckpt.pth")
    extra = {**state, "segmenter.pred2.weight": np.zeros((2, 2, 3, 3), np.float32)}
    with pytest.raises(layout.WeightImportError, match="segmenter.pred2.weight"):
        shls.import_released(_zero_model(config), extra, "ckpt.pth")
    misshaped = {**state, "sf_head_L1.1.weight": np.ones((8,), np.float32)}
    with pytest.raises(layout.WeightImportError, match=r"sf_head_L1.1.weight.*\(8,\)"):
        shls.import_released(_zero_model(config), misshaped, "ckpt.pth")
    with pytest.raises(layout.WeightImportError, match="ckpt.pth"):
        shls.import_released(_zero_model(config), missing, "ckpt.pth")
