"""DINO / INO Vision Transformers and DINO's projection head: PyTorch state_dict -> flax.nnx.

Names of the released `VisionTransformer` (DINO's vision_transformer.py and INO's copy of it),
under an optional prefix (`backbone.` inside DINO's / INO's MultiCropWrapper):

  cls_token [1, 1, D], pos_embed [1, 1 + n0 * n0, D], mask_token [1, 1, D] (INO only),
  patch_embed.proj.{weight [D, 3, p, p], bias}, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}.{weight, bias}, norm.{weight, bias}, head.{weight, bias} (a classifier; absent
  when the released model has none).

The learned position embedding keeps whatever n0 x n0 grid the checkpoint has (INO's networks are
built with img_size 64: an 8 x 8 grid at patch 8; DINO's with 224): the vosjax variable takes the
checkpoint's grid (see `load_vit`), and the forward pass interpolates it to each input as the
released `interpolate_pos_encoding` does.

DINOHead (`mlp.{0,2,4}` Linear layers with GELU between them, `mlp` alone when nlayers is 1,
`last_layer.weight_g` [K, 1] and `last_layer.weight_v` [K, bottleneck] of
torch.nn.utils.weight_norm, or the `parametrizations.weight.original0/1` names of its successor)
-> `vosjax.methods.ino.head.ProjectionHead`. vosjax keeps the weight-normalised parametrisation
(direction v and length g separately, as torch does), so the layer's effective weight
`layout.weight_norm(g, v)` is what both compute, and g is honoured even where it is frozen
(`norm_last_layer`).
"""

from __future__ import annotations

import jax.numpy as jnp

from vosjax.methods.ino import head as head_lib
from vosjax.models import vit
from vosjax.weights import layout

# torch.nn.utils.weight_norm's names, then torch.nn.utils.parametrizations.weight_norm's.
_WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}{name}" if not prefix or prefix.endswith(".") else f"{prefix}.{name}"


def _load_token(reader: layout.StateDictReader, name: str, variable, dim: int) -> None:
    """A [1, 1, D] torch token -> a [1, D] vosjax variable."""
    value = reader.take(name, (1, 1, dim))
    layout.assign(variable, value.reshape(1, dim), name)


def _load_pos_embed(
    reader: layout.StateDictReader, name: str, model: vit.VisionTransformer, strict_grid: bool
) -> None:
    value = reader.take(name)
    dim = model.embed_dim
    n0 = int(round(max(value.shape[1] - 1, 0) ** 0.5)) if value.ndim == 3 else 0
    if (
        value.ndim != 3
        or value.shape[0] != 1
        or value.shape[2] != dim
        or n0 * n0 + 1 != value.shape[1]
    ):
        raise layout.WeightImportError(
            f"{reader.source}: tensor {name!r} has shape {tuple(value.shape)}, expected "
            f"(1, 1 + n * n, {dim}) (a class token and a square grid)"
        )
    value = value.reshape(-1, dim)
    current = model.pos_embed[...]
    if value.shape == current.shape:
        layout.assign(model.pos_embed, value, name)
        return
    if strict_grid:
        m0 = int(round((current.shape[0] - 1) ** 0.5))
        p = model.patch_size
        raise layout.WeightImportError(
            f"{reader.source}: tensor {name!r} holds a {n0} x {n0} position grid (img_size "
            f"{n0 * p} at patch {p}), the vosjax model a {m0} x {m0} grid (img_size {m0 * p}); "
            f"build the model with img_size {n0 * p} (INO: config.model.pos_embed_size={n0 * p})"
        )
    model.pos_embed.set_value(jnp.asarray(value, model.pos_embed[...].dtype))


def load_vit(
    reader: layout.StateDictReader,
    prefix: str,
    model: vit.VisionTransformer,
    *,
    strict_grid: bool = False,
) -> None:
    """Fills `model` from the released VisionTransformer's tensors under `prefix`.

    Does not call `reader.finish()`: the caller owns the whole state_dict.

    Args:
      reader: the state_dict.
      prefix: '' for a plain backbone dict (DINO's released files), 'backbone.' inside a
        MultiCropWrapper (INO's `student` / `teacher` after `module.` is stripped).
      model: the vosjax ViT; patch size, width and depth must match the checkpoint's.
      strict_grid: if False, the position embedding takes the checkpoint's n0 x n0 grid even
        when the model was built for another img_size (the forward pass interpolates from any
        square grid); if True, a different grid is an error that says which img_size fits.

    Tensors that are legitimately absent or unused:
      mask_token: taken where both the checkpoint and the model have one; skipped where the
        model has none (it only matters for masked inputs); left as it is (zeros) where a DINO
        checkpoint has none.
      head.*: skipped when the vosjax model has no classifier head.

    Raises:
      layout.WeightImportError: a tensor is missing or has a shape that does not fit (the
        tensor and both shapes are named).
    """
    dim = model.embed_dim
    p = model.patch_size
    _load_token(reader, _join(prefix, "cls_token"), model.cls_token, dim)
    _load_pos_embed(reader, _join(prefix, "pos_embed"), model, strict_grid)
    mask_name = _join(prefix, "mask_token")
    if model.mask_token is None:
        reader.skip(mask_name)
    elif mask_name in reader:
        _load_token(reader, mask_name, model.mask_token, dim)
    conv = _join(prefix, "patch_embed.proj")
    in_channels = model.patch_embed.kernel.shape[2]
    reader.take(f"{conv}.weight", (dim, in_channels, p, p))
    layout.load_conv(reader, conv, model.patch_embed)
    for i, block in enumerate(model.blocks):
        name = _join(prefix, f"blocks.{i}")
        layout.load_layer_norm(reader, f"{name}.norm1", block.norm1)
        layout.load_linear(reader, f"{name}.attn.qkv", block.attn.qkv)
        layout.load_linear(reader, f"{name}.attn.proj", block.attn.proj)
        layout.load_layer_norm(reader, f"{name}.norm2", block.norm2)
        layout.load_linear(reader, f"{name}.mlp.fc1", block.mlp.fc1)
        layout.load_linear(reader, f"{name}.mlp.fc2", block.mlp.fc2)
    extra = reader.names(_join(prefix, f"blocks.{len(model.blocks)}."))
    if extra:
        raise layout.WeightImportError(
            f"{reader.source}: tensor {extra[0]!r} belongs to block {len(model.blocks)} but the "
            f"vosjax ViT has {len(model.blocks)} blocks (0..{len(model.blocks) - 1})"
        )
    layout.load_layer_norm(reader, _join(prefix, "norm"), model.norm)
    if model.head is None:
        reader.skip(_join(prefix, "head."))
    else:
        layout.load_linear(reader, _join(prefix, "head"), model.head)


def _weight_norm_names(reader: layout.StateDictReader, prefix: str) -> tuple[str, str]:
    for g, v in _WEIGHT_NORM_NAMES:
        if _join(prefix, v) in reader:
            return _join(prefix, g), _join(prefix, v)
    return _join(prefix, _WEIGHT_NORM_NAMES[0][0]), _join(prefix, _WEIGHT_NORM_NAMES[0][1])


def load_dino_head(
    reader: layout.StateDictReader, prefix: str, head: head_lib.ProjectionHead
) -> None:
    """Fills `head` from a released DINOHead (use_bn=False) under `prefix`.

    Does not call `reader.finish()`. BatchNorm layers of a `use_bn_in_head` head are not taken
    and so end as unexpected tensors at `finish()`: vosjax's head has none.

    Args:
      reader: the state_dict.
      prefix: e.g. 'headlist.headlist.0.' (INO) or 'head.' (DINO's full checkpoints).
      head: the vosjax projection head (its widths and number of layers must match).

    Raises:
      layout.WeightImportError: a tensor is missing or misshaped.
    """
    layers = list(head.mlp)
    for i, layer in enumerate(layers):
        name = _join(prefix, "mlp" if len(layers) == 1 else f"mlp.{2 * i}")
        layout.load_linear(reader, name, layer)
    g_name, v_name = _weight_norm_names(reader, _join(prefix, "last_layer"))
    bottleneck, out_dim = head.v[...].shape
    g = reader.take(g_name, (out_dim, 1))
    v = reader.take(v_name, (out_dim, bottleneck))
    # Same parametrisation on both sides: direction v (transposed to [in, out]) and length g.
    layout.assign(head.v, layout.linear_kernel(v), v_name)
    layout.assign(head.g, g.reshape(out_dim), g_name)
