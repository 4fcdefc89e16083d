"""INO reference cases: the ViT-S/8 backbone (plain and masked), the DINOHead, the three losses.

The released model's state_dicts are converted by `vosjax.weights.vit`; every output is compared
elementwise at the case.json tolerances (per output where case.json gives them). Nothing here
depends on the particular sizes, seeds or probe positions of one case set: they are read from the
case (the probe indices of `vit_s8_blocks` from its output description).
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.reference import cases
from tests.reference.entry import CaseEntry, as_numpy
from vosjax.methods.ino import head as head_lib
from vosjax.methods.ino import losses
from vosjax.models import vit as vit_lib
from vosjax.weights import layout
from vosjax.weights import vit as vit_weights

BACKBONE_TIMING = "vit_s8 get_intermediate_layers(n=6), eval, 2x3x72x128"
# The released timings of these case.json files are of other computations (an inference frame,
# a whole training step): no ratio is computed for the masked forward, the head or the losses
# (experiments/bench_ino.py times vosjax's whole training step on its own).
NO_MATCHING_TIMING = "(no released timing of this computation)"


def _tolerances(case: cases.Case, key: str) -> tuple[float, float]:
    meta = case.meta
    per = meta.get("tolerances", {}).get(key, {})
    return per.get("atol", meta["atol"]), per.get("rtol", meta["rtol"])


def check_all(case: cases.Case, outputs: dict) -> None:
    """Every stored output against vosjax's, at the case's tolerances."""
    missing = sorted(set(case.output_keys()) - set(outputs))
    assert not missing, f"{case.folder}: vosjax computed no {missing}"
    for key in case.output_keys():
        atol, rtol = _tolerances(case, key)
        cases.assert_close(
            f"{case.method}/{case.name} {key}",
            outputs[key],
            case.output(key),
            atol=atol,
            rtol=rtol,
        )


def _manifest_vit(case: cases.Case, *, mask_token: bool) -> vit_lib.VisionTransformer:
    """A vosjax ViT shaped like the case's manifest (width, depth, patch, grid), weights loaded."""
    shapes = {name: tuple(shape) for name, shape in case.meta["manifest"]}
    dim, _, patch, _ = shapes["patch_embed.proj.weight"]
    depth = 1 + max(int(n.split(".")[1]) for n in shapes if n.startswith("blocks."))
    heads = dim // 64  # DINO's ViTs: 64 channels per head (ViT-S 6 heads, ViT-B 12)
    grid = int(round((shapes["pos_embed"][1] - 1) ** 0.5))
    model = vit_lib.VisionTransformer(
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        img_size=grid * patch,
        use_mask_token=mask_token,
        rngs=nnx.Rngs(0),
    )
    reader = layout.StateDictReader(case.weights, f"{case.method}/{case.name}")
    vit_weights.load_vit(reader, "", model)
    reader.finish()
    return model


def _probe_indices(case: cases.Case) -> np.ndarray:
    """The token indices listed in the description of `tokens_in_probe` ('[0, 1, 17, ...]')."""
    text = case.meta["outputs"]["tokens_in_probe"]
    found = re.search(r"\[(\d+(?:\s*,\s*\d+)*)\]", text)
    assert found, f"{case.folder}: no probe token indices in {text!r}"
    return np.asarray(json.loads(f"[{found.group(1)}]"))


def _nhwc(images: np.ndarray) -> jax.Array:
    return jnp.asarray(np.transpose(images, (0, 2, 3, 1)))


# ---------------------------------------------------------------------------------- vit_s8_blocks
def prepare_blocks(case: cases.Case):
    model = _manifest_vit(case, mask_token=False)
    depth = model.depth
    n_out = case.output("intermediate_n6_probe").shape[0]
    probe = _probe_indices(case)
    images = _nhwc(case.input("images"))
    graphdef, state = nnx.split(model)

    @jax.jit
    def compute(state, images):
        m = nnx.merge(graphdef, state)
        tokens = m.prepare_tokens(images)
        out = m(images, return_blocks=range(1, depth + 1), norm_blocks=False)
        raw = jnp.stack([out["blocks"][i] for i in range(1, depth + 1)])  # [depth, B, 1+hw, D]
        normed = jax.vmap(m.norm)(raw[depth - n_out :])  # get_intermediate_layers(n)
        size_h, size_w = images.shape[1:3]
        pos = vit_lib.interpolate_pos_embed(
            m.pos_embed[...],
            (size_h // m.patch_size, size_w // m.patch_size),
            m.interpolate_offset,
            square_input=size_h == size_w,
        )
        return {
            "pos_embed_interp": pos[None],
            "tokens_in_probe": tokens[:, probe],
            "blocks_prenorm_probe": raw[:, :, probe],
            "intermediate_n6_probe": normed[:, :, probe],
            "block7_normed": normed[0],
            "block12_normed": normed[-1],
        }

    def run():
        return as_numpy(compute(state, images))

    return run


# ---------------------------------------------------------------------------------- vit_s8_masked
def prepare_masked(case: cases.Case):
    model = _manifest_vit(case, mask_token=True)
    images = _nhwc(case.input("image"))
    b, size_h, size_w = images.shape[:3]
    grid = (size_h // model.patch_size, size_w // model.patch_size)
    masks = jnp.asarray(case.input("mask").reshape(b, *grid))
    probe = np.asarray(case.output("tokens_in_probe_index"))
    graphdef, state = nnx.split(model)

    @jax.jit
    def compute(state, images, masks):
        m = nnx.merge(graphdef, state)
        out = m(images, masks=masks)
        return {
            "tokens_in_probe_index": jnp.asarray(probe, jnp.int32),
            "tokens_in_probe": m.prepare_tokens(images, masks)[:, probe],
            "cls": out["cls"],
            "patch_tokens": out["patches"].reshape(b, -1, out["patches"].shape[-1]),
        }

    def run():
        return as_numpy(compute(state, images, masks))

    return run


# ------------------------------------------------------------------------------------------ head
def prepare_head(case: cases.Case):
    shapes = {name: tuple(shape) for name, shape in case.meta["manifest"]}
    linears = sorted(
        (int(n.split(".")[1]), shape)
        for n, shape in shapes.items()
        if re.fullmatch(r"mlp\.\d+\.weight", n)
    )
    if not linears:  # nlayers == 1: `mlp` is the Linear itself
        linears = [(0, shapes["mlp.weight"])]
    out_dim, bottleneck = shapes["last_layer.weight_v"]
    module = head_lib.ProjectionHead(
        linears[0][1][1],
        hidden_dim=linears[0][1][0] if len(linears) > 1 else bottleneck,
        bottleneck_dim=bottleneck,
        out_dim=out_dim,
        num_layers=len(linears),
        norm_last_layer=True,
        rngs=nnx.Rngs(0),
    )
    reader = layout.StateDictReader(case.weights, f"{case.method}/{case.name}")
    vit_weights.load_dino_head(reader, "", module)
    reader.finish()
    tokens = jnp.asarray(case.input("tokens"))
    graphdef, state = nnx.split(module)

    @jax.jit
    def compute(state, tokens):
        m = nnx.merge(graphdef, state)
        return {"logits": m(tokens), "bottleneck_normed": m.bottleneck(tokens)}

    def run():
        return as_numpy(compute(state, tokens))

    return run


# ---------------------------------------------------------------------------------------- losses
def prepare_losses(case: cases.Case):
    s = case.meta["settings"]
    t, ng, nl, b = s["T"], s["ng"], s["nl"], s["B"]
    assert ng == 1, f"{case.folder}: vosjax's INO has one global crop per frame, case has ng={ng}"
    k = s["D"]
    epoch = s["epoch"]
    assert 0 <= epoch < s["nepochs"]  # the teacher temperature is constant under these settings

    def clips(rows: np.ndarray, crops: int) -> jax.Array:
        """Rows ordered (frame, crop, batch) -> [B, T, crops, ...]."""
        x = rows.reshape(t, crops, b, *rows.shape[1:])
        return jnp.asarray(np.moveaxis(x, 2, 0))

    teacher_cls = clips(case.input("teacher_cls"), ng)[:, :, 0]
    student_glb = clips(case.input("student_glb_cls"), ng)[:, :, 0]
    student_local = clips(case.input("student_local_cls"), nl)
    teacher_hw = clips(case.input("teacher_hw"), ng)[:, :, 0]
    student_hw = clips(case.input("student_hw"), ng)[:, :, 0]
    mask_frame = case.input("mask_frame")  # [T, ng, B, N]
    mask = jnp.asarray(np.moveaxis(mask_frame[:, 0], 1, 0))  # [B, T, N]
    center_cls = jnp.asarray(case.input("center_cls")[0])
    center_hw = jnp.asarray(case.input("center_hw")[0])
    # The affinity loss takes one mask per clip, shared by its frames (as main_VOS draws it).
    assert (mask_frame == mask_frame[:1]).all(), f"{case.folder}: mask differs between frames"

    def total(student_glb, student_local):
        cfdino, new_cls = losses.out_generative_frame_pairs(
            teacher_cls,
            student_glb,
            student_local,
            center_cls,
            teacher_temp=s["teacher_temp"],
            student_temp=s["student_temp"],
            center_momentum=s["center_momentum"],
        )
        mim, new_hw = losses.mim_loss_frames(
            teacher_hw,
            student_hw,
            mask,
            center_hw,
            teacher_temp=s["teacher_temp"],
            student_temp=s["student_temp"],
            center_momentum=s["center_momentum"],
        )
        affine = losses.affinity_loss(
            teacher_hw,
            student_hw,
            mask[:, 0],
            teacher_temp=s["affine_teacher_temp"],
            student_temp=s["affine_student_temp"],
        )
        loss = cfdino + mim + affine
        return loss, {"cfdino": cfdino, "mim": mim, "affine": affine, "cls": new_cls, "hw": new_hw}

    @jax.jit
    def compute(student_glb, student_local):
        (loss, aux), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
            student_glb, student_local
        )

        def rows(x: jax.Array) -> jax.Array:  # [B, T, crops, K] -> rows (frame, crop, batch)
            return jnp.transpose(x, (1, 2, 0, 3)).reshape(-1, k)

        return {
            "loss_cfdino": aux["cfdino"][None],
            "loss_mim": aux["mim"][None],
            "loss_affine": aux["affine"][None],
            "loss_total": loss[None],
            "center_cls_after": aux["cls"][None],
            "center_hw_after": aux["hw"][None],
            "grad_student_glb_cls": rows(grads[0][:, :, None]),
            "grad_student_local_cls": rows(grads[1]),
        }

    def run():
        return as_numpy(compute(student_glb, student_local))

    return run


CASES = {
    "vit_s8_blocks": CaseEntry(prepare_blocks, check_all, timing_key=BACKBONE_TIMING),
    "vit_s8_masked": CaseEntry(prepare_masked, check_all, timing_key=NO_MATCHING_TIMING),
    "head": CaseEntry(prepare_head, check_all, timing_key=NO_MATCHING_TIMING),
    "losses": CaseEntry(prepare_losses, check_all, timing_key=NO_MATCHING_TIMING),
}
