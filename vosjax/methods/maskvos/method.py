"""Mask-VOS, the full method: E + (V, D) trained with L_seg + L_short + L_long (paper, sec. 3).

Batch layout (`mask_data.MaskTwoViewTransform` + the grain pipeline, B examples):
  'video'        uint8   [B, T, S, S, 3]   the clip;
  'view'         uint8   [B, S, S, 3]      an affine view of frame 0;
  'affine'       float32 [B, 2, 3]         view pixel -> frame-0 pixel;
  'labels'       uint8   [B, T, S/8, S/8]  pseudo masks: 0 background, 1..K sampled clusters;
  'num_objects'  int32   [B]               objects sampled in each clip (<= K);
  'frame_indices' int32  [B, T]            (optional) video frame index of each clip frame.

E runs once over the clip and the view; its keys feed the correspondence terms
(`correspondence.correspondence_terms`) and, with res4 / f3 / f2, the segmentation term
(`segmentation.segmentation_loss`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vosjax import evaluate, optimizers
from vosjax.methods.maskvos import (
    correspondence,
    inference,
    mask_data,
    mask_model,
    released_inference,
    segmentation,
)
from vosjax.methods.maskvos import encoder as encoder_lib
from vosjax.ops import color


class MaskVOSModel(nnx.Module):
    """The trained modules: `encoder` (E) and `head` (V and D)."""

    def __init__(self, encoder: encoder_lib.MaskVOSEncoder, head: mask_model.MaskHead):
        self.encoder = encoder
        self.head = head


def add_config_fields(
    config: ml_collections.ConfigDict, smoke: bool = False, code: bool = False
) -> None:
    """Adds the fields of the full method to a correspondence config (`configs/maskvos/corr_*`).

    `config.model`: value_dim, decoder_widths, mask_backbone (V's ResNet);
    `config.loss`: seg_weight, seg_queries (query frames, teacher forcing), seg_temperature,
    coarse ('soft' paper / 'argmax' code); `config.data`: num_objects, min_object_fraction;
    `config.clustering` (`pseudo_masks.ClusteringConfig`); `config.schedule`: warmup_steps,
    update_every, cache_dir; `config.eval.segmenter` ('decoding' | 'propagation') and
    `config.eval.decoding` (`inference.MaskDecodingConfig`).

    Args:
      config: a `configs/maskvos/corr_*` config, changed in place.
      smoke: tiny widths (tests).
      code: the released code's choices where it departs from the paper: M=7 clusters fitted on
        every 8th frame without position encoding, argmax coarse masks in training, the
        decoder output averaged with the coarse mask and the recent memory filled with the
        first frame at inference (`eval.decoding`), and the released inference protocol as the
        segmenter (`eval.segmenter='released'`: `released_inference`).
    """
    config.method = "maskvos"
    config.model.mask_backbone = config.model.backbone
    config.model.value_dim = 32 if smoke else 512
    config.model.decoder_widths = (32, 16, 8) if smoke else (512, 256, 128)
    config.loss.seg_weight = 1.0
    config.loss.seg_queries = 2  # the released code's frames 1 and 2
    config.loss.seg_temperature = 0.05
    config.loss.coarse = "argmax" if code else "soft"
    config.data.num_objects = 2
    config.data.min_object_fraction = 0.05
    config.clustering = ml_collections.ConfigDict(
        {
            "num_clusters": 7 if code else 5,  # M
            "position_dim": 0 if code else 24,  # 3-D sinusoidal encoding of (x, y, t)
            "position_weight": 1.0,
            "fit_every": 8 if code else 1,
            "max_iters": 50,
            "seed": 0,
        }
    )
    epoch = config.get_ref("steps_per_epoch")
    config.schedule = ml_collections.ConfigDict(
        {
            # Correspondence learning only before the first clustering (smoke: clusters at step
            # 0 with the initial encoder and again at step 1).
            "warmup_steps": 0 if smoke else epoch * 10,
            # Re-clustering period (Table 4d: every 10 epochs); 0 clusters once.
            "update_every": 1 if smoke else epoch * 10,
            "cache_dir": "",  # '' = <workdir>/pseudo_masks
        }
    )
    # 'decoding' (vosjax's mask decoding, config.eval.decoding), 'propagation' (E's keys with
    # config.eval.propagation) or 'released' (the released infer_mask.py protocol,
    # `released_inference`, with config.eval.decoding's top_k, temperature, radius, num_recent).
    config.eval.segmenter = "released" if code else "decoding"
    config.eval.decoding = ml_collections.ConfigDict(
        {
            "top_k": 10,
            "temperature": 0.05,
            "num_recent": 5,
            "radius": 12.0,
            "restrict_first_frame": False,
            "refine_rounds": 3,
            "mix_coarse": code,
            "pad_recent_with_first": code,
            "short_side": 480,
        }
    )
    if smoke:
        config.eval.decoding.short_side = None
        config.eval.decoding.refine_rounds = 1


SEGMENTERS = ("decoding", "propagation", "released")
CORRESPONDENCE_WEIGHTS = ("short_weight", "long_weight", "temp_weight")


class MaskVOS:
    """The method for `vosjax.train`: `build_model`, `loss_fn`, `make_transform`.

    Args:
      config: a correspondence config with `add_config_fields` applied.
    """

    fp32_inputs = ("affine",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.correspondence = correspondence.Correspondence(config)  # validates config.loss
        loss = config.loss
        if loss.seg_weight < 0:
            raise ValueError(f"config.loss.seg_weight={loss.seg_weight}; expected >= 0")
        if loss.coarse not in segmentation.COARSE_MODES:
            raise ValueError(
                f"config.loss.coarse={loss.coarse!r}; expected one of {segmentation.COARSE_MODES}"
            )
        if not 1 <= loss.seg_queries <= config.data.clip_len - 1:
            raise ValueError(
                f"config.loss.seg_queries={loss.seg_queries}; expected 1..clip_len - 1 = "
                f"{config.data.clip_len - 1}"
            )
        if config.eval.get("segmenter", "decoding") not in SEGMENTERS:
            raise ValueError(
                f"config.eval.segmenter={config.eval.segmenter!r}; expected one of {SEGMENTERS}"
            )
        if "decoding" in config.eval:
            inference.from_config(config.eval.decoding)  # names a bad field now, not at eval
        frozen = config.optim.get("frozen", ())
        # A frozen E (or backbone) never changes: its BatchNorm statistics stay too.
        self.encoder_frozen = optimizers.is_frozen("encoder", frozen)
        self.backbone_frozen = optimizers.is_frozen("encoder/backbone", frozen)
        self.correspondence_off = not any(loss[n] for n in CORRESPONDENCE_WEIGHTS)
        self.config = config

    def build_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MaskVOSModel:
        """E as in the correspondence method, plus V and D sized by `config.model`."""
        encoder = self.correspondence.build_model(config, rngs)
        model = config.model
        head = mask_model.MaskHead(
            model.mask_backbone,
            encoder_backbone=model.backbone,
            embed_dim=model.embed_dim,
            value_dim=model.value_dim,
            decoder_widths=tuple(model.decoder_widths),
            norm=model.norm,
            rngs=rngs,
        )
        return MaskVOSModel(encoder, head)

    def make_transform(self) -> mask_data.MaskTwoViewTransform:
        """Clip + view + affine + sampled pseudo-mask objects."""
        return mask_data.make_transform(self.config.data)

    def make_segmenter(self, model: MaskVOSModel) -> evaluate.Segmenter:
        """Mask decoding (`config.eval.decoding`), the released protocol, or propagation of E's
        keys."""
        segmenter = self.config.eval.get("segmenter", "decoding")
        if segmenter == "propagation":
            return self.correspondence.make_segmenter(model.encoder)
        if segmenter == "released":
            decoding = self.config.eval.decoding
            return released_inference.ReleasedMaskDecoder(
                model.encoder,
                model.head,
                released_inference.ReleasedDecodingConfig(
                    top_k=decoding.top_k,
                    temperature=decoding.temperature,
                    radius=decoding.radius,
                    num_recent=decoding.num_recent,
                ),
            )
        return inference.MaskDecodingSegmenter.from_config(
            model.encoder, model.head, self.config.eval.decoding
        )

    def loss_fn(
        self, model: MaskVOSModel, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, Any]]:
        """seg_weight * L_seg + the correspondence terms.

        A batch without 'labels' (the correspondence-only rounds before the first clustering)
        gives the correspondence terms alone. With every correspondence weight 0 and 'labels'
        given, the view is not encoded and the metrics are L_seg's alone. A frozen E or
        backbone (`config.optim.frozen` holds 'encoder' or 'encoder/backbone') runs with its
        running statistics and passes no gradient back.

        Returns:
          (scalar loss, the correspondence metrics + 'seg_loss', 'seg_acc', 'seg_objects').
        """
        del rng, step
        cfg = self.config.loss
        video = batch["video"]
        b, t = video.shape[:2]
        seg_only = self.correspondence_off and "labels" in batch
        frames = video.reshape(b * t, *video.shape[2:])
        if not seg_only:
            frames = jnp.concatenate([frames, batch["view"]], axis=0)
        frames = color.normalize_frames(frames)
        outputs = model.encoder(
            frames, train=not self.encoder_frozen, train_backbone=not self.backbone_frozen
        )
        if self.encoder_frozen:
            outputs = jax.lax.stop_gradient(outputs)
        if seg_only:
            corr, aux = jnp.zeros((), jnp.float32), {}
        else:
            keys = outputs["key"].astype(jnp.float32)
            corr, aux = correspondence.correspondence_terms(
                cfg,
                keys[: b * t].reshape(b, t, *keys.shape[1:]),
                keys[b * t :],
                batch["affine"],
                batch.get("frame_indices"),
                video.shape[2:4],
            )
        if "labels" not in batch:
            return corr, aux
        clip = {name: x[: b * t].reshape(b, t, *x.shape[1:]) for name, x in outputs.items()}
        seg, seg_aux = segmentation.segmentation_loss(
            model.head,
            frames[: b * t].reshape(b, t, *frames.shape[1:]),
            clip,
            batch["labels"].astype(jnp.int32),
            batch["num_objects"],
            max_objects=self.config.data.num_objects,
            num_queries=cfg.seg_queries,
            temperature=cfg.seg_temperature,
            coarse=cfg.coarse,
            train=True,
        )
        return corr + cfg.seg_weight * seg, aux | seg_aux
