"""The alternation of Mask-VOS inside one training run: clustering, then mask-embedded learning.

Rounds (`vosjax.train.DataRounds`), from `config.schedule`:
  - steps [0, warmup_steps): correspondence learning only (no pseudo masks yet; the released code
    clusters with the keys of a correspondence-stage checkpoint);
  - at `warmup_steps` and then every `update_every` steps (the paper's Table 4d: every 10
    epochs): the current encoder clusters every training video into pseudo masks
    (`pseudo_masks.build`, cached under `cache_dir` by step and clustering config), and the
    round trains L_seg + L_short + L_long on clips carrying those masks.
`update_every` 0 clusters once ("no update"). A resumed run reuses the cached set of the round
it is in; if that set is missing it is rebuilt (with a warning) from the encoder of the step the
run resumed at.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from absl import logging

from vosjax.data import clip_sampling, clip_sources, pipeline
from vosjax.methods.maskvos import correspondence, mask_data, pseudo_masks


def round_starts(num_train_steps: int, warmup_steps: int, update_every: int) -> list[int]:
    """First steps of the rounds: 0, then every clustering step below `num_train_steps`.

    Raises:
      ValueError: a negative field (named as config.schedule.<field>).
    """
    if warmup_steps < 0:
        raise ValueError(f"config.schedule.warmup_steps={warmup_steps}: expected >= 0")
    if update_every < 0:
        raise ValueError(f"config.schedule.update_every={update_every}: expected >= 0 (0: never)")
    starts = [0]
    clustering = warmup_steps
    while clustering < num_train_steps:
        if clustering > 0:
            starts.append(clustering)
        if not update_every:
            break
        clustering += update_every
    return starts


class PseudoMaskRounds:
    """`DataRounds` of Mask-VOS: the pseudo masks of round r are made at its first step.

    Args:
      config: the method's config (`configs/maskvos/r18.py`): `schedule`, `clustering`,
        `data`, `batch_size`, `seed`, `num_train_steps`.
      source: the training videos (clustered whole, sampled into clips).
      sampler: how clips are sampled.
      cache_dir: where the pseudo-mask sets live (`config.schedule.cache_dir`, or a default).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        source: clip_sources.VideoSource,
        sampler: clip_sampling.ClipSampler,
        cache_dir: str | pathlib.Path,
    ):
        self.config = config
        self.source = source
        self.sampler = sampler
        self.cache_dir = pathlib.Path(cache_dir)
        self.warmup_steps = int(config.schedule.warmup_steps)
        self.starts = round_starts(
            int(config.num_train_steps), self.warmup_steps, int(config.schedule.update_every)
        )
        self.clustering = pseudo_masks.ClusteringConfig.from_config(config.clustering)
        self.mask_transform = mask_data.make_transform(config.data)
        self.corr_transform = correspondence.make_transform(config.data)

    def masks_for(self, model: Any, round_start: int) -> pathlib.Path:
        """The pseudo-mask set of the round starting at `round_start` (built if not cached)."""
        cached = pseudo_masks.find_cached(self.cache_dir, self.clustering, round_start)
        if cached is not None:
            logging.info("Pseudo masks of step %d: reusing %s", round_start, cached)
            return cached
        logging.info(
            "Clustering %d training videos into %d segments with the encoder of step %d",
            len({self.source.name(i) for i in range(len(self.source))}),
            self.clustering.num_clusters,
            round_start,
        )

        def progress(done: int, total: int) -> None:
            if done == total or done % max(1, total // 10) < jax.device_count():
                logging.info("Clustered %d / %d videos", done, total)

        return pseudo_masks.build(
            correspondence.KeyExtractor(model.encoder),
            self.source,
            self.clustering,
            self.cache_dir,
            round_start,
            progress=progress,
        )

    def prepare(
        self, model: Any, round_start: int, step: int
    ) -> Callable[[int], Iterator[dict[str, Any]]]:
        """The data of the round starting at `round_start` (`model` is the state at `step`)."""
        data = self.config.data
        seed = int(self.config.seed) + round_start  # a new order of clips every round
        common = {
            "sampler": self.sampler,
            "global_batch_size": int(self.config.batch_size),
            "seed": seed,
            **pipeline.reading_options(data),
        }
        if round_start < self.warmup_steps:
            logging.info("Steps %d..%d: correspondence learning only", 0, self.warmup_steps)
            return lambda _: pipeline.make_train_iterator(
                self.source, transform=self.corr_transform, **common
            )
        if step != round_start and (
            pseudo_masks.find_cached(self.cache_dir, self.clustering, round_start) is None
        ):
            logging.warning(
                "The pseudo masks of the round starting at step %d are not in %s; rebuilding "
                "them with the encoder of step %d",
                round_start,
                self.cache_dir,
                step,
            )
        folder = self.masks_for(model, round_start)
        return lambda _: mask_data.make_train_iterator(
            self.source, folder, transform=self.mask_transform, **common
        )
