"""The SHLS network (the released `My_Net`): backbone, superfeatures, memory select, segmenter,
and what training and inference share: the embedding and the memory clusterer's attention maps.

`embed` is the released `SPX_embedding` + `My_Net.superfeat`: normalised frames and their
superpixel label maps -> the per-pixel maps of the segmenter and one superfeature per superpixel:

  L1 = layer1 [N, H/2, W/2, w] bilinearly upsampled to H x W ++ info(labels)      [N, H, W, w+3]
  L4 = layer4 [N, H/4, W/4, 4w] ++ info(nearest /4 labels)                       [N, h4, w4, 4w+3]
  superfeatures = SuperfeatureHead(mean of L1 per superpixel over the labels,
                                   mean of L4 per superpixel over the /4 labels)  [N, S, D]

The info map gives every pixel its superpixel's (size / pixels of the map, mean row / (rows - 1),
mean column / (columns - 1)) (`segment_pooling.info_map`, the released convention). Superpixel
ids are 0-based here (the released labels are these + 1; -1 = none).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vosjax.methods.shls import backbone as backbone_lib
from vosjax.methods.shls import segmenter_net, superfeatures
from vosjax.ops import memory_clustering, roi, segment_pooling

INFO_DIM = 3  # superpixel size, mean row, mean column
ATTENTION_DIM = 4  # the memory clusterer's channels per object
# The released test-time normalisation (config_LT davis_mean / davis_std); training on MSRA10K
# used msra_mean / msra_std.
DAVIS_MEAN = (0.4512, 0.4448, 0.4111)
DAVIS_STD = (0.2485, 0.2403, 0.2617)
MSRA_MEAN = (0.4532, 0.4335, 0.3921)
MSRA_STD = (0.3025, 0.2918, 0.3122)


class Encoded(NamedTuple):
    """What `embed` gives for N frames of H x W with at most S superpixels each.

    Attributes:
      l1: float [N, H, W, w + 3], upsampled layer1 ++ the info map.
      l4: float [N, ceil(H/4), ceil(W/4), 4w + 3], layer4 ++ the info map of the /4 labels.
      superfeatures: float [N, S, D]; 0 after the frame's largest superpixel id.
      valid: bool [N, S], the superpixels that hold pixels.
    """

    l1: jax.Array
    l4: jax.Array
    superfeatures: jax.Array
    valid: jax.Array


class SHLSModel(nnx.Module):
    """The released My_Net (`config.model`): backbone (spx_embedding.feat_extractor), the
    superfeature head (sf_head_L1, sf_head_L4, sf_conv_1x1), mem_select and segmenter."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        width = cfg.width
        self.backbone = backbone_lib.SHLSBackbone(width=width, blocks=tuple(cfg.blocks), rngs=rngs)
        self.l1_dim = width + INFO_DIM
        self.l4_dim = 4 * width + INFO_DIM
        self.superfeatures = superfeatures.SuperfeatureHead(
            self.l1_dim, self.l4_dim, cfg.superfeature_dim, rngs=rngs
        )
        self.mem_select = segmenter_net.MemorySelect(
            self.l1_dim, self.l4_dim, ATTENTION_DIM, cfg.gate_hidden, rngs=rngs
        )
        # L1 input: first-frame mask + last prediction + first frame's L1; L4 input: the first
        # frame's RoI L4 ++ MemorySelect's gated last and current L4.
        self.segmenter = segmenter_net.SegmenterN(
            self.l1_dim + 2, 3 * self.l4_dim, ATTENTION_DIM, cfg.hidden, rngs=rngs
        )


def normalize(frames: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """uint8 (or 0..255) frames [..., 3] -> float32 (x / 255 - mean) / std."""
    x = jnp.asarray(frames).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class Maps(NamedTuple):
    """The per-pixel maps of `embedding_maps` and their per-superpixel means.

    Attributes:
      l1: [N, H, W, l1_dim]; l4: [N, h4, w4, l4_dim] (see `Encoded`).
      l1_mean: [N, S, l1_dim], the mean of l1 over each superpixel's pixels (0 if none).
      l4_mean: [N, S, l4_dim], the mean of l4 over each superpixel's cells of the /4 labels.
      l1_valid, l4_valid: bool [N, S], superpixels with pixels in the full / the /4 label map.
      listed: bool [N, S], ids up to the frame's largest (the rows the released code has).
    """

    l1: jax.Array
    l4: jax.Array
    l1_mean: jax.Array
    l4_mean: jax.Array
    l1_valid: jax.Array
    l4_valid: jax.Array
    listed: jax.Array


def embedding_maps(
    model: SHLSModel,
    images: jax.Array,
    labels: jax.Array,
    num_segments: int,
    *,
    train: bool,
) -> Maps:
    """The released SPX_embedding (and the pooling of My_Net.superfeat): normalised images
    [N, H, W, 3] and superpixels int32 [N, H, W] -> `Maps`.

    The /4 label map is the nearest resize (torch's legacy 'nearest') of the labels to the
    backbone's /4 grid. Labels outside [0, num_segments) belong to no superpixel.
    """
    n, h, w = labels.shape
    if images.shape[:3] != (n, h, w):
        raise ValueError(f"embed: images {images.shape} and labels {labels.shape} differ")
    feats = model.backbone(images, train=train)
    layer1 = feats["layer1"].astype(jnp.float32)
    layer4 = feats["layer4"].astype(jnp.float32)
    labels4 = roi.resize_nearest(labels, layer4.shape[1:3], channels_last=False)

    def per_frame(l1_f, l4_f, labels_f, labels4_f):
        l1_map = jnp.concatenate(
            [roi.resize_bilinear(l1_f, (h, w)), segment_pooling.info_map(labels_f, num_segments)],
            -1,
        )
        l4_map = jnp.concatenate([l4_f, segment_pooling.info_map(labels4_f, num_segments)], -1)
        l1_mean, l1_valid = segment_pooling.segment_mean(l1_map, labels_f, num_segments)
        l4_mean, l4_valid = segment_pooling.segment_mean(l4_map, labels4_f, num_segments)
        listed = jnp.arange(num_segments) <= jnp.max(labels_f)
        return Maps(l1_map, l4_map, l1_mean, l4_mean, l1_valid, l4_valid, listed)

    return jax.vmap(per_frame)(layer1, layer4, labels, labels4)


def embed(
    model: SHLSModel,
    images: jax.Array,
    labels: jax.Array,
    num_segments: int,
    *,
    train: bool,
) -> Encoded:
    """Normalised images [N, H, W, 3] and superpixels int32 [N, H, W] -> `Encoded`."""
    maps = embedding_maps(model, images, labels, num_segments, train=train)
    sf = model.superfeatures(
        maps.l1_mean, maps.l4_mean, maps.l1_valid, maps.l4_valid, maps.listed, train=train
    )
    return Encoded(maps.l1, maps.l4, sf.astype(jnp.float32), maps.l1_valid)


def encode(
    model: SHLSModel,
    frames: jax.Array,
    labels: jax.Array,
    num_segments: int,
    *,
    train: bool,
    mean: tuple[float, ...] = DAVIS_MEAN,
    std: tuple[float, ...] = DAVIS_STD,
) -> Encoded:
    """uint8 frames [N, H, W, 3] and superpixels int32 [N, H, W] -> `Encoded` (`embed` of the
    frames normalised by `mean` and `std`, the released DAVIS statistics by default)."""
    return embed(model, normalize(frames, mean, std), labels, num_segments, train=train)


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
