"""INO's networks: a student ViT + projection head, their EMA teacher, and the centres.

    model = INOModel(config.model, rngs=nnx.Rngs(0))
    model.student, model.student_head    # trained (nnx.Param)
    model.teacher, model.teacher_head    # EMA of the student (`Teacher` variables, no gradient)
    model.center_cls, model.center_patch # teacher centring of class / patch outputs (`Center`)

The teacher starts as an exact copy of the student (DINO / INO) and moves only through
`ema_update`, applied inside the jitted train step (the method's `after_update`). Its weights are
`Teacher` variables, not `nnx.Param`: the optimiser and the gradient never see them, and they are
checkpointed with the rest of the model state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vosjax.methods.ino import head as head_lib
from vosjax.models import vit
from vosjax.ops import ema

BACKBONES = ("vit_small", "vit_base")


class Teacher(nnx.Variable):
    """A teacher weight: the EMA of the student weight at the same path."""


class Center(nnx.Variable):
    """A running mean of the teacher's outputs, subtracted before its softmax."""


def as_teacher(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose `nnx.Param`s are `Teacher` variables with the same values."""
    graphdef, state = nnx.split(nnx.clone(module))
    state = jax.tree.map(
        lambda v: Teacher(v[...]) if isinstance(v, nnx.Param) else v,
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.merge(graphdef, state)


def build_backbone(model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> vit.VisionTransformer:
    """The student ViT of `config.model` (with the mask token of masked image modelling)."""
    if model.backbone not in BACKBONES:
        raise ValueError(f"config.model.backbone={model.backbone!r}; expected one of {BACKBONES}")
    kwargs = {
        "patch_size": model.patch_size,
        "img_size": model.pos_embed_size,
        "use_mask_token": True,
        "drop_path_rate": model.drop_path,
        "rngs": rngs,
    }
    if model.get("embed_dim"):  # a custom (smoke) width overrides the named backbone's shape
        return vit.VisionTransformer(
            embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads, **kwargs
        )
    build = vit.vit_small if model.backbone == "vit_small" else vit.vit_base
    return build(**kwargs)


class INOModel(nnx.Module):
    """Student and teacher (ViT + shared class / patch projection head) and the two centres."""

    def __init__(self, model: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        """Builds the networks of `config.model`.

        Args:
          model: `config.model`: backbone ('vit_small' | 'vit_base'), patch_size, pos_embed_size
            (INO: 64, position embeddings learned for 64 x 64 inputs and interpolated),
            drop_path (student), and the head's hidden_dim, bottleneck_dim, out_dim,
            head_layers, norm_last_layer; optional embed_dim / depth / num_heads for a custom
            (smoke) ViT.
          rngs: initialisation randomness.
        """
        self.student = build_backbone(model, rngs=rngs)
        self.student_head = head_lib.ProjectionHead(
            self.student.embed_dim,
            hidden_dim=model.hidden_dim,
            bottleneck_dim=model.bottleneck_dim,
            out_dim=model.out_dim,
            num_layers=model.head_layers,
            norm_last_layer=model.norm_last_layer,
            rngs=rngs,
        )
        self.teacher = as_teacher(self.student)
        self.teacher_head = as_teacher(self.student_head)
        self.center_cls = Center(jnp.zeros((model.out_dim,), jnp.float32))
        self.center_patch = Center(jnp.zeros((model.out_dim,), jnp.float32))

    def update_teacher(self, momentum: jax.Array | float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for the ViT and the head."""
        for student, teacher in (
            (self.student, self.teacher),
            (self.student_head, self.teacher_head),
        ):
            state = nnx.state(teacher, Teacher)
            new = ema.ema_update(
                nnx.to_pure_dict(state), nnx.to_pure_dict(nnx.state(student, nnx.Param)), momentum
            )
            nnx.replace_by_pure_dict(state, new)
            nnx.update(teacher, state)


def tokens_through_head(
    backbone: vit.VisionTransformer,
    projection: head_lib.ProjectionHead,
    images: jax.Array,
    *,
    masks: jax.Array | None = None,
    train: bool = False,
    key: jax.Array | None = None,
    with_patches: bool = True,
) -> dict[str, Any]:
    """The head's outputs of the class token (and the patch tokens) of `images`.

    Args:
      backbone: the ViT.
      projection: the projection head (shared by the class and patch tokens).
      images: [B, S, S, 3] normalised.
      masks: optional bool [B, h, w] patches replaced by the mask token.
      train: drop path on.
      key: drop-path key.
      with_patches: also project the patch tokens.

    Returns:
      {'cls': [B, K], 'patches': [B, h w, K] (with_patches)} float32.
    """
    out = backbone(images, masks=masks, train=train, key=key)
    if not with_patches:
        return {"cls": projection(out["cls"]).astype(jnp.float32)}
    b, h, w, d = out["patches"].shape
    tokens = jnp.concatenate([out["cls"][:, None], out["patches"].reshape(b, h * w, d)], axis=1)
    projected = projection(tokens).astype(jnp.float32)
    return {"cls": projected[:, 0], "patches": projected[:, 1:]}


def cast_floats(module: nnx.Module, dtype: Any) -> nnx.Module:
    """A copy of `module` with floating variables in `dtype` (the teacher under mixed precision)."""
    graphdef, state = nnx.split(module)
    state = jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
    )
    return nnx.merge(graphdef, state)
