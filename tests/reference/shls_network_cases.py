"""SHLS's networks against the released code: superfeatures, memory clusterer, segmenter.

Weights go through `vosjax.weights.shls.import_released` into the model that
`SHLS.build_model` returns; everything is computed by vosjax's own modules and functions
(`model.embedding_maps`, `SuperfeatureHead`, `memory.ReleasedMemory`, `roi_segment.segment`).
Labels in the cases are 1-based (0 = none), vosjax's superpixel ids 0-based: id = label - 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.shls import base
from tests.reference import cases
from tests.reference.entry import CaseEntry, as_numpy
from vosjax.methods.shls import memory, method, roi_segment
from vosjax.methods.shls import model as model_lib
from vosjax.weights import shls as shls_weights


def _model(case: cases.Case) -> model_lib.SHLSModel:
    """The released-size model of `SHLS.build_model`, filled from the case's weights.

    Built abstractly and zero-filled before the import (every variable is then overwritten),
    which skips the random initialisation of ~30 M parameters.
    """
    config = base.get_config()
    shls = method.SHLS(config)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: shls.build_model(config, nnx.Rngs(0))))
    model = nnx.merge(graphdef, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state))
    shls_weights.import_released(model, case.weights, f"{case.folder}/seeded weights")
    return model


def _nchw(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, -1, -3)


# ---------------------------------------------------------------- superfeatures


def _prepare_superfeatures(case: cases.Case):
    model = _model(case)
    images = jnp.asarray(case.input("img").transpose(0, 2, 3, 1))
    spx = case.input("spx")[:, 0]
    labels = jnp.asarray(spx.astype(np.int32) - 1)  # label n -> id n - 1; 0 (none) -> -1
    counts = [int(spx[b].max()) for b in range(len(spx))]
    num_segments = max(counts)

    @nnx.jit
    def compute(model, images, labels):
        maps = model_lib.embedding_maps(model, images, labels, num_segments, train=False)
        head = model.superfeatures
        branches = head.branches(
            maps.l1_mean, maps.l4_mean, maps.l1_valid, maps.l4_valid, train=False
        )
        sf = head(maps.l1_mean, maps.l4_mean, maps.l1_valid, maps.l4_valid, maps.listed)
        return {
            "sf": sf,
            "branches": jnp.moveaxis(branches, -1, 1),  # [B, 2, S, D]
            "L1_sub": _nchw(maps.l1[:, 3::16, 5::16]),
            "L4_sub": _nchw(maps.l4[:, 1::8, 2::8]),
        }

    def run():
        out = as_numpy(compute(model, images, labels))
        result = {"L1_sub": out["L1_sub"], "L4_sub": out["L4_sub"]}
        for b, n in enumerate(counts):
            result[f"superfeat_{b}"] = out["sf"][b, :n]
            result[f"sf_branches_{b}"] = out["branches"][b, :, :n]
        return result

    return run


def _check_all_outputs(case: cases.Case, outputs: dict) -> None:
    atol, rtol = case.meta["atol"], case.meta["rtol"]
    for key in case.output_keys():
        cases.assert_close(key, outputs[key], case.output(key), atol=atol, rtol=rtol)


# ---------------------------------------------------------------- memory


def _prepare_memory(case: cases.Case):
    num_cls = int(case.input("num_cls"))
    x0, x1 = case.input("X0"), case.input("X1")
    y0 = case.input("y0")
    spx0, spx1, label0 = case.input("spx0"), case.input("spx1"), case.input("label0")
    centroids, kmeans_init = case.input("centroids"), case.input("kmeans_init")

    def run():
        mem = memory.ReleasedMemory(k=2, ratio=0.5, clusters_per_class=2)
        mem.fit(x0, y0, num_cls, centroids=centroids)
        first = mem.predict(x0, spx0, label0, gt=label0)
        second = mem.predict(x1, spx1, label0)
        out = {
            "knn_pred0": first.knn_pred,
            "knn_sim0": first.knn_sim,
            "cent_sim0": first.cent_sim,
            "knn_pred1": second.knn_pred,
            "knn_sim1": second.knn_sim,
            "cent_sim1": second.cent_sim,
            "preseg1_raw": second.preseg_raw,
            "preseg1": second.preseg,
            "bbox0": np.asarray(first.boxes, np.int32),
            "bbox1": np.asarray(second.boxes, np.int32),
        }
        for k in range(num_cls - 1):
            out[f"attmaps0_obj{k + 1}"] = first.attmaps[k]
            out[f"attmaps1_obj{k + 1}"] = second.attmaps[k]
        for c in range(num_cls):
            points = x0[y0 == c + 1]
            out[f"kmeans_fit_centroids_{c}"] = memory.fit_kmeans(points, kmeans_init[c])
        return as_numpy(out)

    return run


def _check_memory(case: cases.Case, outputs: dict) -> None:
    atol, rtol = case.meta["atol"], case.meta["rtol"]
    for key in case.output_keys():
        expected = case.output(key)
        if np.issubdtype(expected.dtype, np.integer):
            np.testing.assert_array_equal(outputs[key], expected, err_msg=key)
        else:
            cases.assert_close(key, outputs[key], expected, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- segmenter


def _prepare_segmenter(case: cases.Case):
    model = _model(case)
    num_cls = int(case.input("num_cls"))
    objects = range(1, num_cls)

    def frame(key_l1: str, key_l4: str) -> roi_segment.FrameMaps:
        return roi_segment.FrameMaps(
            l1=jnp.asarray(case.input(key_l1)[0].transpose(1, 2, 0)),
            l4=jnp.asarray(case.input(key_l4)[0].transpose(1, 2, 0)),
        )

    first = last = frame("feat0_L1", "feat0_L4")
    this = frame("feat1_L1", "feat1_L4")
    lastpred = jnp.asarray(case.input("lastpred")[0].astype(np.float32))  # [C, H, W]
    boxes0 = [tuple(int(v) for v in b) for b in case.input("bbox0")]
    boxes1 = [tuple(int(v) for v in b) for b in case.input("bbox1")]
    att0 = [jnp.asarray(case.input(f"attmaps0_obj{k}").transpose(1, 2, 0)) for k in objects]
    att1 = [jnp.asarray(case.input(f"attmaps1_obj{k}").transpose(1, 2, 0)) for k in objects]
    segment = functools.partial(
        roi_segment.segment,
        model,
        first=first,
        first_pred=lastpred,
        first_boxes=boxes0,
        last=last,
        last_pred=lastpred,
        last_boxes=boxes0,
        last_attention=att0,
        this=this,
        this_boxes=boxes1,
        this_attention=att1,
    )

    def run():
        result = segment()
        out = {"pred": result.log_odds[None], "fg_prob": result.fg_prob}
        for k, obj in zip(objects, result.objects, strict=True):
            out[f"mem_select_obj{k}"] = _nchw(obj.mem_select)
            out[f"segmenter_logits_obj{k}"] = _nchw(obj.logits)
            out[f"segmenter_in_L1_shape_obj{k}"] = np.asarray(
                [1, obj.l1_input_shape[-1], *obj.l1_input_shape[:2]], np.int32
            )
        return as_numpy(out)

    return run


def _check_segmenter(case: cases.Case, outputs: dict) -> None:
    rtol = case.meta["rtol"]
    pred, expected = outputs["pred"], case.output("pred")
    # Log-odds at 1e-3 where the reference is not saturated (float32 rounding of 1 - p moves
    # the log-odds near the clamps); the rest through fg_prob and the arg-max labels.
    moderate = np.abs(expected) < 9
    cases.assert_close("pred where |pred| < 9", pred[moderate], expected[moderate], atol=1e-3)
    agree = np.argmax(pred, 1) == np.argmax(expected, 1)
    assert agree.all(), f"pred arg-max differs at {int((~agree).sum())} pixels"
    cases.assert_close("fg_prob", outputs["fg_prob"], case.output("fg_prob"), atol=1e-5)
    for key in case.output_keys():
        if key.startswith("segmenter_in_L1_shape"):
            np.testing.assert_array_equal(outputs[key], case.output(key), err_msg=key)
        elif key.startswith("segmenter_logits"):
            cases.assert_close(key, outputs[key], case.output(key), atol=1e-4, rtol=rtol)
        elif key.startswith("mem_select"):
            cases.assert_close(key, outputs[key], case.output(key), atol=1e-6, rtol=rtol)


CASES = {
    "superfeatures": CaseEntry(
        _prepare_superfeatures,
        _check_all_outputs,
        timing_key="My_Net superfeat forward, 1 image 256x256, ~300 superpixels (eval, no_grad)",
    ),
    "memory": CaseEntry(
        _prepare_memory,
        _check_memory,
        timing_key="memoryClusterer fit + 2 predicts (+3 k-means checks), ~100 superpixels",
    ),
    "segmenter": CaseEntry(
        _prepare_segmenter,
        _check_segmenter,
        timing_key="My_Net.segment, 2 objects, 48x80 frame (model built once)",
    ),
}
