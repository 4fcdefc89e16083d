"""Mask-VOS dense correspondence learning (Li et al., CVPR 2023, section 3.3) as a vosjax method.

Batch layout (what `TwoViewTransform` + `vosjax.data.pipeline.ClipLoader` produce, B examples):
  'video'         uint8   [B, T, S, S, 3]  the clip (T = config.data.clip_len, S = crop);
  'view'          uint8   [B, S, S, 3]     an affine view Phi(I_r) of the clip's frame 0;
  'affine'        float32 [B, 2, 3]        view pixel -> frame-0 pixel (OpenCV coordinates);
  'frame_indices' int32   [B, T]           video frame index of each clip frame (optional:
                                           without it the clip is taken as consecutive).
Other entries ('video_index', 'skipped') are ignored.

Losses (`config.loss`):
- short-term appearance consistency, paper: E(Phi(I_t)) ~ Phi(E(I_t+1)), with I_t = frame 0
  (seen through the view) and I_t+1 the clip frame nearest to it in time; `short_term =
  'cross_key'` is the released code's choice: both ends are frame 0 (two views of one frame).
  InfoNCE over grid samples at temperature 0.05.
- long-term semantic dependency: E(I_q) ~ A^T Phi(E(I_r)) with I_q the clip frame farthest from
  frame 0 (used only when at least `long_min_gap` = 5 frames away), A the softmax affinity of
  the query to the view of I_r.
- the released code's `temp` anchor term (weight 0 by default).
The paper weighs the two terms 1 : 1; the code used 0.1 * cross_key + temp.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vosjax import evaluate
from vosjax.data import transforms
from vosjax.methods.maskvos import encoder as encoder_lib
from vosjax.ops import color, correspondence_losses, propagation

SHORT_TERM_MODES = ("paper", "cross_key")


@dataclasses.dataclass(frozen=True)
class TwoViewTransform:
    """Clip [T, H, W, 3] uint8 -> the clip cropped to S x S plus an affine view of frame 0.

    As the released code: short side resized into [min_short, max_short], a random S x S crop
    and a horizontal flip shared by the clip; the view of frame 0 zooms in (scale >= 1), may
    flip, shift and colour-jitter.

    Attributes:
      crop: output side S.
      min_short: smallest short side before the crop (>= crop).
      max_short: largest short side before the crop.
      flip: probability of flipping the whole clip.
      view_scale: (min, max) zoom of the view (1..2: it shows 100% .. 50% of the frame side).
      view_rotation: (min, max) rotation of the view, degrees.
      view_translation: largest shift of the view's centre, fraction of the side.
      view_flip: probability of flipping the view.
      view_jitter: colour-jitter strength (brightness, contrast, saturation) of the view.
    """

    crop: int = 256
    min_short: int = 256
    max_short: int = 320
    flip: float = 0.5
    view_scale: tuple[float, float] = (1.0, 2.0)
    view_rotation: tuple[float, float] = (0.0, 0.0)
    view_translation: float = 0.15
    view_flip: float = 0.5
    view_jitter: float = 0.0

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Returns {'clip': uint8 [T, S, S, 3], 'view': uint8 [S, S, 3], 'affine': f32 [2, 3]}."""
        clip = transforms.ShortSideResize(self.min_short, self.max_short)(clip, rng)
        clip = transforms.RandomCrop(self.crop)(clip, rng)
        clip = transforms.HorizontalFlip(self.flip)(clip, rng)
        view, affine = self.affine_view(clip, rng)
        return {"clip": np.ascontiguousarray(clip), "view": view, "affine": affine}

    def affine_view(
        self, clip: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The view of frame 0: (uint8 [S, S, 3], float32 [2, 3] view pixel -> frame-0 pixel)."""
        view = clip[:1]
        if self.view_jitter > 0:
            s = self.view_jitter
            view = transforms.ColourJitter(s, s, s, hue=0.0, p=0.8)(view, rng)
        warped = transforms.RandomAffine(
            scale=self.view_scale,
            rotation=self.view_rotation,
            translation=(self.view_translation, self.view_translation),
            flip=self.view_flip,
        )(view, rng)
        return warped["clip"][0], warped["params"]["affine"][0].astype(np.float32)


def make_transform(data: ml_collections.ConfigDict) -> TwoViewTransform:
    """The training transform of `config.data`."""
    if data.min_short < data.crop:
        raise ValueError(
            f"config.data.min_short={data.min_short} must be >= config.data.crop={data.crop}"
        )
    return TwoViewTransform(
        crop=data.crop,
        min_short=data.min_short,
        max_short=data.max_short,
        flip=data.flip,
        view_scale=tuple(data.view_scale),
        view_rotation=tuple(data.view_rotation),
        view_translation=data.view_translation,
        view_flip=data.view_flip,
        view_jitter=data.view_jitter,
    )


def _select_frame(features: jax.Array, index: jax.Array) -> jax.Array:
    """features [B, T, h, w, C], index int [B] -> [B, h, w, C]."""
    return jnp.take_along_axis(features, index[:, None, None, None, None], axis=1)[:, 0]


def partner_frames(frame_indices: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Clip positions of the short-term and long-term partners of position 0.

    Args:
      frame_indices: int [B, T] video frame index of each clip frame (T >= 2).

    Returns:
      (near [B], far [B], far_gap [B]): the position (>= 1) nearest in time to position 0, the
      farthest one, and the farthest one's distance in frames.
    """
    gaps = jnp.abs(frame_indices[:, 1:] - frame_indices[:, :1])
    near = 1 + jnp.argmin(gaps, axis=1)
    far = 1 + jnp.argmax(gaps, axis=1)
    return near, far, jnp.max(gaps, axis=1)


def correspondence_terms(
    cfg: ml_collections.ConfigDict,
    clip_keys: jax.Array,
    view_keys: jax.Array,
    affine: jax.Array,
    frame_indices: jax.Array | None,
    image_size: tuple[int, int],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted correspondence losses from E's keys (shared with the full Mask-VOS method).

    Args:
      cfg: `config.loss`.
      clip_keys: [B, T, h, w, D] keys of the clip's frames.
      view_keys: [B, h, w, D] keys of the affine view of frame 0.
      affine: [B, 2, 3] view pixel -> frame-0 pixel.
      frame_indices: int [B, T] video frame index of each clip frame, or None (consecutive).
      image_size: (S, S), the frames' size.

    Returns:
      (scalar loss, {'short_loss', 'short_acc', 'long_loss', 'long_acc', 'long_fraction',
      ['temp_loss', 'temp_acc']}).
    """
    b, t = clip_keys.shape[:2]
    # Matrices in pixel units need fp32 even when the trainer casts floating inputs to bf16.
    affine = affine.astype(jnp.float32)
    if frame_indices is None:
        frame_indices = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    reference = clip_keys[:, 0]
    near, far, far_gap = partner_frames(frame_indices)
    partner = reference if cfg.short_term == "cross_key" else _select_frame(clip_keys, near)
    short, short_acc = correspondence_losses.equivariance_loss(
        view_keys,
        partner,
        affine,
        image_size,
        grid_size=cfg.grid_size,
        temperature=cfg.temperature,
    )
    long_ok = (far_gap >= cfg.long_min_gap).astype(jnp.float32)
    long, long_acc = correspondence_losses.long_term_loss(
        _select_frame(clip_keys, far),
        view_keys,
        reference,
        affine,
        image_size,
        grid_size=cfg.grid_size,
        temperature=cfg.temperature,
        affinity_temperature=cfg.affinity_temperature,
        weights=long_ok,
    )
    total = cfg.short_weight * short + cfg.long_weight * long
    aux = {
        "short_loss": short,
        "short_acc": short_acc,
        "long_loss": long,
        "long_acc": long_acc,
        "long_fraction": jnp.mean(long_ok),
    }
    if cfg.temp_weight > 0:
        others = clip_keys[:, 1:]
        temp, temp_acc = correspondence_losses.anchor_loss(
            reference,
            others,
            others,
            grid_size=cfg.temp_grid_size,
            temperature=cfg.temp_temperature,
        )
        total = total + cfg.temp_weight * temp
        aux |= {"temp_loss": temp, "temp_acc": temp_acc}
    return total, aux


class Correspondence:
    """The method: `build_model`, `loss_fn`, `make_segmenter` for `vosjax.train`.

    Args:
      config: the whole config (`configs/maskvos/corr_r18.py`); `loss_fn` reads `config.loss`.
    """

    fp32_inputs = ("affine",)  # pixel coordinates: bf16 would round them by up to 1 pixel

    def __init__(self, config: ml_collections.ConfigDict):
        loss = config.loss
        if loss.short_term not in SHORT_TERM_MODES:
            raise ValueError(
                f"config.loss.short_term={loss.short_term!r}; expected one of {SHORT_TERM_MODES}"
            )
        for name in ("short_weight", "long_weight", "temp_weight"):
            if loss[name] < 0:
                raise ValueError(f"config.loss.{name}={loss[name]}; expected >= 0")
        if config.data.clip_len < 2:
            raise ValueError(f"config.data.clip_len={config.data.clip_len}; expected >= 2")
        self.config = config

    def build_model(
        self, config: ml_collections.ConfigDict, rngs: nnx.Rngs
    ) -> encoder_lib.MaskVOSEncoder:
        """E with the backbone and sizes of `config.model`."""
        model = config.model
        return encoder_lib.MaskVOSEncoder(
            model.backbone,
            output_stride=model.output_stride,
            embed_dim=model.embed_dim,
            key_dim=model.key_dim,
            norm=model.norm,
            rngs=rngs,
        )

    def make_transform(self) -> TwoViewTransform:
        """The per-clip data transform producing 'video', 'view' and 'affine'."""
        return make_transform(self.config.data)

    def loss_fn(
        self,
        model: encoder_lib.MaskVOSEncoder,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Weighted short-term + long-term (+ anchor) loss on one batch (see the module doc).

        Returns:
          (scalar loss, {'short_loss', 'short_acc', 'long_loss', 'long_acc', 'long_fraction',
          ['temp_loss', 'temp_acc']}).
        """
        del rng, step  # the augmentations come with the batch
        video = batch["video"]
        b, t = video.shape[:2]
        frames = jnp.concatenate([video.reshape(b * t, *video.shape[2:]), batch["view"]], axis=0)
        keys = model(color.normalize_frames(frames), train=True)["key"]
        keys = keys.astype(jnp.float32)
        return correspondence_terms(
            self.config.loss,
            keys[: b * t].reshape(b, t, *keys.shape[1:]),
            keys[b * t :],
            batch["affine"],
            batch.get("frame_indices"),
            video.shape[2:4],
        )

    def make_segmenter(self, model: encoder_lib.MaskVOSEncoder) -> evaluate.PropagationSegmenter:
        """Label propagation (`config.eval.propagation`, the 'crw' preset) over E's keys."""
        return evaluate.PropagationSegmenter(
            KeyExtractor(model), propagation.from_config_dict(self.config.eval.propagation)
        )


class KeyExtractor:
    """frame uint8 [H, W, 3] -> keys [ceil(H/8), ceil(W/8), key_dim] with running statistics.

    Holds a snapshot of the model's state; one jit compilation per frame size.
    """

    def __init__(self, model: encoder_lib.MaskVOSEncoder):
        self.graphdef, self.state = nnx.split(model)

        def extract(state: Any, frame: jax.Array) -> jax.Array:
            module = nnx.merge(self.graphdef, state)
            return module(color.normalize_frames(frame[None]), train=False)["key"][0]

        self._extract = jax.jit(extract)

    def __call__(self, frame: np.ndarray) -> jax.Array:
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"KeyExtractor: expected a frame [H, W, 3], got {frame.shape}")
        return self._extract(self.state, jnp.asarray(frame))
