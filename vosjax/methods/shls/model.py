"""The SHLS network: backbone, superfeatures and the segmentation net, and what training and
inference share: the encoder and the memory clusterer's attention maps.

`encode` is the part training and inference share: frames and their superpixel label maps ->
the backbone's layer1 and layer4 features with the superpixel info map appended (the inputs of
the segmentation net) and one superfeature per superpixel:

  layer1 [N, H/2, W/2, w] (upsampled to H x W) ++ info      -> mean per superpixel [N, S, w + 3]
  layer4 [N, H/4, W/4, 4w] (upsampled to H x W) ++ info     -> mean per superpixel [N, S, 4w + 3]
  -> SuperfeatureHead -> superfeatures [N, S, D] (D = 32; 0 for padding superpixels)

The info map gives every pixel its superpixel's (size / (H W), mean x / W, mean y / H), so the
mean of the info channels over a superpixel is that superpixel's own info (computed directly).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vosjax.methods.shls import backbone as backbone_lib
from vosjax.methods.shls import segmenter_net, superfeatures
from vosjax.ops import color, memory_clustering, segment_pooling

INFO_DIM = 3  # superpixel size, mean x, mean y
ATTENTION_DIM = 4  # the memory clusterer's channels per class


class Encoded(NamedTuple):
    """What `encode` gives for N frames of H x W with at most S superpixels each.

    Attributes:
      l1: float [N, H/2, W/2, w + 3], layer1 features ++ the info map (average-pooled).
      l4: float [N, H/4, W/4, 4w + 3], layer4 features ++ the info map (average-pooled).
      superfeatures: float [N, S, D], 0 for empty (padding) superpixels.
      valid: bool [N, S], the superpixels that hold pixels.
    """

    l1: jax.Array
    l4: jax.Array
    superfeatures: jax.Array
    valid: jax.Array


class SHLSModel(nnx.Module):
    """backbone + superfeature head + segmentation net (`config.model`)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        width = cfg.width
        self.backbone = backbone_lib.SHLSBackbone(width=width, blocks=tuple(cfg.blocks), rngs=rngs)
        self.l1_dim = width + INFO_DIM
        self.l4_dim = 4 * width + INFO_DIM
        self.superfeatures = superfeatures.SuperfeatureHead(
            self.l1_dim, self.l4_dim, cfg.superfeature_dim, rngs=rngs
        )
        self.segmenter = segmenter_net.SegmentationNet(
            self.l1_dim, self.l4_dim, ATTENTION_DIM, cfg.hidden, rngs=rngs
        )


def superpixel_info(labels: jax.Array, num_segments: int) -> tuple[jax.Array, jax.Array]:
    """labels int32 [H, W] -> (info [S, 3] = (size / (H W), mean x / W, mean y / H), valid [S])."""
    h, w = labels.shape
    ys, xs = jnp.meshgrid(
        (jnp.arange(h, dtype=jnp.float32) + 0.5) / h,
        (jnp.arange(w, dtype=jnp.float32) + 0.5) / w,
        indexing="ij",
    )
    means, valid = segment_pooling.segment_mean(jnp.stack([xs, ys], -1), labels, num_segments)
    size = segment_pooling.segment_counts(labels, num_segments) / (h * w)
    return jnp.concatenate([size[:, None], means], -1), valid


def _average_pool(x: jax.Array, factor: int) -> jax.Array:
    """[H, W, C] -> [H / factor, W / factor, C] (block means)."""
    h, w, c = x.shape
    return x.reshape(h // factor, factor, w // factor, factor, c).mean((1, 3))


def _upsample(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[h, w, C] -> [H, W, C], bilinear (half-pixel centres, as align_corners=False)."""
    return jax.image.resize(x, (*size, x.shape[-1]), "bilinear", antialias=False)


def encode(
    model: SHLSModel,
    frames: jax.Array,
    labels: jax.Array,
    num_segments: int,
    *,
    train: bool,
) -> Encoded:
    """uint8 frames [N, H, W, 3] and superpixels int32 [N, H, W] -> `Encoded`.

    H and W must be multiples of 4; labels outside [0, num_segments) belong to no superpixel.
    """
    n, h, w = labels.shape
    if h % 4 or w % 4:
        raise ValueError(f"encode: frames {h}x{w}: expected sides that are multiples of 4")
    images = color.normalize_frames(frames.astype(jnp.float32))
    feats = model.backbone(images, train=train)
    l1 = feats["layer1"].astype(jnp.float32)
    l4 = feats["layer4"].astype(jnp.float32)

    def per_frame(l1_f, l4_f, labels_f):
        info, valid = superpixel_info(labels_f, num_segments)
        pixel_info = segment_pooling.paint(info, labels_f)  # [H, W, 3]
        l1_mean, _ = segment_pooling.segment_mean(_upsample(l1_f, (h, w)), labels_f, num_segments)
        l4_mean, _ = segment_pooling.segment_mean(_upsample(l4_f, (h, w)), labels_f, num_segments)
        return (
            jnp.concatenate([l1_f, _average_pool(pixel_info, 2)], -1),
            jnp.concatenate([l4_f, _average_pool(pixel_info, 4)], -1),
            jnp.concatenate([l1_mean, info], -1),
            jnp.concatenate([l4_mean, info], -1),
            valid,
        )

    l1_cat, l4_cat, l1_pooled, l4_pooled, valid = jax.vmap(per_frame)(l1, l4, labels)
    sf = model.superfeatures(l1_pooled, l4_pooled, valid, train=train)
    return Encoded(l1_cat, l4_cat, sf.astype(jnp.float32), valid)


def memory_attention(
    key: jax.Array,
    query: jax.Array,
    bank: memory_clustering.MemoryBank,
    num_classes: int,
    memory: ml_collections.ConfigDict,
) -> memory_clustering.Attention:
    """The memory clusterer of `config.memory` for superfeatures `query` [S, D]: spherical
    k-means centres per class refitted on `bank`, then kNN votes and the 4 attention channels
    per class (`memory_clustering.attention_features`)."""
    centers, center_valid = memory_clustering.class_centroids(
        key,
        bank,
        num_classes,
        clusters_per_class=memory.clusters_per_class,
        num_iters=memory.kmeans_iters,
        num_restarts=memory.kmeans_restarts,
    )
    return memory_clustering.attention_features(
        query, bank, centers, center_valid, num_classes, k=memory.k, ratio=memory.vote_ratio
    )


def object_attention_maps(attention: jax.Array, labels: jax.Array) -> jax.Array:
    """Attention channels [S, C, 4] of classes 0..C-1 -> the objects' (1..C-1) channels painted
    onto the pixels of their superpixels (`labels` int32 [H, W]): [C - 1, H, W, 4]."""
    s, c, channels = attention.shape
    h, w = labels.shape
    pixels = segment_pooling.paint(attention[:, 1:].reshape(s, -1), labels)
    return pixels.reshape(h, w, c - 1, channels).transpose(2, 0, 1, 3)
