"""The released per-object segmentation step: boxes, crops, RoIAlign, aggregation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.shls import base
from vosjax.methods.shls import method, roi_segment

H, W = 24, 32


@pytest.fixture(scope="module")
def model():
    config = base.get_config("smoke")
    return method.SHLS(config).build_model(config, nnx.Rngs(0))


def _maps(model, seed):
    rng = np.random.default_rng(seed)
    l1 = jnp.asarray(rng.normal(size=(H, W, model.l1_dim)), jnp.float32)
    l4 = jnp.asarray(rng.normal(size=(H // 4, W // 4, model.l4_dim)), jnp.float32)
    return roi_segment.FrameMaps(l1, l4)


def _att(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(*shape, 4)), jnp.float32)


def test_whole_frame_boxes_match_the_batched_full_frame_path(model):
    first, last, this = _maps(model, 0), _maps(model, 1), _maps(model, 2)
    mask = jnp.asarray(np.random.default_rng(3).uniform(size=(H, W)) > 0.5, jnp.float32)
    pred = jnp.asarray(np.random.default_rng(4).normal(size=(H, W)), jnp.float32)
    att_last, att_this = _att((H, W), 5), _att((H, W), 6)
    full = (0, H, 0, W)
    one = roi_segment.segment_object(
        model, first=first, first_mask=mask, first_box=full, last=last, last_pred=pred,
        last_box=full, last_attention=att_last, this=this, this_box=full,
        this_attention=att_this,
    )  # fmt: skip
    batch = lambda m: roi_segment.FrameMaps(m.l1[None], m.l4[None])  # noqa: E731
    logits = roi_segment.segment_full_frame(
        model, first=batch(first), first_mask=mask[None], last=batch(last),
        last_pred=pred[None], last_attention=att_last[None], this=batch(this),
        this_attention=att_this[None],
    )  # fmt: skip
    np.testing.assert_allclose(logits, one.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one.fg_prob, jax.nn.softmax(logits[0], -1)[..., 1], atol=1e-6)


def test_box_path_shapes_padding_and_zero_outside_the_box(model):
    first, last, this = _maps(model, 0), _maps(model, 1), _maps(model, 2)
    first_pred = jnp.zeros((3, H, W)).at[1, 2:10, 3:12].set(1).at[2, 12:20, 15:30].set(1)
    first_pred = first_pred.at[0].set(1 - first_pred[1] - first_pred[2])
    boxes0 = [(1, 11, 2, 13), (11, 21, 14, 31)]
    boxes1 = [(0, 13, 1, 12), (10, 23, 12, 32)]  # 13 x 11 and 13 x 20: padded to 16 x 12/20
    att0 = [_att((b[1] - b[0], b[3] - b[2]), 7 + i) for i, b in enumerate(boxes0)]
    att1 = [_att((b[1] - b[0], b[3] - b[2]), 9 + i) for i, b in enumerate(boxes1)]
    out = roi_segment.segment(
        model, first=first, first_pred=first_pred, first_boxes=boxes0, last=last,
        last_pred=first_pred, last_boxes=boxes0, last_attention=att0, this=this,
        this_boxes=boxes1, this_attention=att1,
    )  # fmt: skip
    assert out.objects[0].logits.shape == (1, 16, 12, 2)
    assert out.objects[1].logits.shape == (1, 16, 20, 2)
    assert out.objects[0].mem_select.shape == (1, 4, 3, 2 * model.l4_dim)
    assert out.objects[1].l1_input_shape == (16, 20, model.l1_dim + 2)
    fg = np.asarray(out.fg_prob)
    for k, (r0, r1, c0, c1) in enumerate(boxes1):
        outside = np.ones((H, W), bool)
        outside[r0:r1, c0:c1] = False
        np.testing.assert_array_equal(fg[k][outside], 0)
        assert (fg[k][~outside] > 0).all()
        # Inside: softmax of the logits with the centred padding (top 1, left 0 / 0) removed.
        top, left = (16 - (r1 - r0)) // 2, ((-(c1 - c0)) % 4) // 2
        logits = np.asarray(out.objects[k].logits[0, top : top + r1 - r0, left : left + c1 - c0])
        p = np.exp(logits - logits.max(-1, keepdims=True))
        np.testing.assert_allclose(fg[k][~outside].reshape(r1 - r0, c1 - c0),
                                   (p[..., 1] / p.sum(-1)), rtol=1e-5, atol=1e-6)  # fmt: skip
    # The released soft aggregation in float32: bg = prod(1 - p), clamp, log(p / (1 - p)).
    em = np.concatenate([np.prod(1 - fg, 0, keepdims=True), fg]).astype(np.float32)
    em = np.clip(em, np.float32(1e-7), np.float32(1 - 1e-7))
    np.testing.assert_allclose(out.log_odds, np.log(em / (1 - em)), rtol=1e-5, atol=1e-5)
    assert float(out.log_odds.max()) == pytest.approx(15.9424, abs=1e-3)  # bg outside boxes


def test_bad_boxes_and_counts_name_the_argument(model):
    maps = _maps(model, 0)
    kw = dict(first=maps, first_mask=jnp.zeros((H, W)), first_box=(0, 4, 0, 4), last=maps,
              last_pred=jnp.zeros((H, W)), last_box=(0, 4, 0, 4), last_attention=_att((4, 4), 0),
              this=maps, this_box=(0, 4, 0, 4), this_attention=_att((4, 4), 1))  # fmt: skip
    with pytest.raises(ValueError, match="this_box"):
        roi_segment.segment_object(model, **{**kw, "this_box": (0, 30, 0, 4)})
    with pytest.raises(ValueError, match="last_attention"):
        roi_segment.segment_object(model, **{**kw, "last_attention": _att((5, 4), 0)})
