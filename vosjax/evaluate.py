"""Semi-supervised VOS evaluation: segment every sequence, write PNGs, score them, summarise.

  python -m vosjax.evaluate --config=configs/propagation/lab_pixels.py --workdir=W \
      [--config.data.davis_root=ROOT --config.data.imageset=2016/val]

Writes `W/results/<seq>/<frame>.png`, the official CSVs and `results.json` in `W/results`, and
clu summaries (TensorBoard) in `W/eval`. A segmenter is anything with
`segment(sequence) -> iterator of uint8 [H, W] masks, one per frame`: label propagation over any
feature extractor (here), or a method's own decoder (later issues) plug into the same loop.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import jax
import ml_collections
import numpy as np
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from vosjax import summaries
from vosjax.data import davis, image_io, results_writer, user_video, youtube_vos
from vosjax.data import sequence as sequence_lib
from vosjax.data.synthetic import export as synthetic_export
from vosjax.metrics import davis_protocol, report
from vosjax.models import pixel_features
from vosjax.ops import propagation


class Segmenter(Protocol):
    def segment(self, sequence: sequence_lib.VideoSequence) -> Iterator[np.ndarray]:
        """Yields one uint8 [H, W] mask of object ids per frame of `sequence`."""


class FeatureExtractor(Protocol):
    def __call__(self, frame: np.ndarray) -> jax.Array:
        """uint8 [H, W, 3] -> float [h, w, C]."""


def given_masks(sequence: sequence_lib.VideoSequence) -> dict[int, np.ndarray]:
    """The input masks: frame index -> ids [H, W] of the objects that start at that frame.

    DAVIS gives every object in frame 0; YouTube-VOS gives each object on the frame it first
    appears in. Void (255) and objects that started earlier are set to background.
    """
    masks = {}
    for index in sorted(set(sequence.start_frames.values())):
        mask = sequence.read_mask(index)
        starting = np.array(sequence.objects_starting_at(index), np.uint8)
        masks[index] = np.where(np.isin(mask, starting), mask, 0).astype(np.uint8)
    return masks


def keep_given_masks(
    sequence: sequence_lib.VideoSequence, masks: Iterable[np.ndarray]
) -> Iterator[np.ndarray]:
    """`masks` (one per frame) with the given masks kept exactly on the frames they are given.

    On a frame with a given mask, the objects that start there are their given pixels and
    nothing else, and the earlier objects keep their predicted pixels where the given mask is
    background: the first annotated frame's output is thus its given mask. The segmenters'
    own outputs there vary (a mask rebuilt from the feature grid in CRW's protocol); a user's
    video (`user_video.UserVideo`) always gets this.
    """
    given = given_masks(sequence)
    for t, mask in enumerate(masks):
        if t in given:
            starting = np.array(sequence.objects_starting_at(t), np.int64)
            kept = np.where(np.isin(mask, starting), 0, mask)
            mask = np.where(given[t] > 0, given[t], kept).astype(np.uint8)
        yield mask


class PropagationSegmenter:
    """Label propagation of the first mask(s) over the features of `extractor`.

    The frames reach the extractor as the config's reader gives them (`short_side`,
    `size_multiple`, `fit`: DINO's 480 x 832 for a 480 x 854 frame); the given masks go to the
    feature grid from their original size (`first_mask`), the soft labels come back as
    `upsample` says, and annotated frames output as `first_output` says.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        config: propagation.PropagationConfig,
    ):
        self.extractor = extractor
        self.config = config

    def segment(self, sequence: sequence_lib.VideoSequence) -> Iterator[np.ndarray]:
        for _, mask in self.labels_and_masks(sequence):
            yield mask

    def labels_and_masks(
        self, sequence: sequence_lib.VideoSequence
    ) -> Iterator[tuple[jax.Array, np.ndarray]]:
        """Yields (soft labels [h, w, K] on the feature grid, uint8 ids [H, W]) per frame."""
        inputs = given_masks(sequence)
        if not sequence.start_frames:
            logging.warning("%s: the first mask holds no object", sequence.name)
        num_classes = 1 + max(sequence.start_frames, default=0)
        propagator = propagation.VideoPropagator(self.config, num_classes=num_classes)
        first_features = self.extractor(propagator.read_frame(sequence.read_frame(0)))
        grid = first_features.shape[:2]
        given = {i: propagator.labels_from_mask(m, grid) for i, m in inputs.items()}

        def features() -> Iterator[jax.Array]:
            yield first_features
            for t in range(1, len(sequence)):
                yield self.extractor(propagator.read_frame(sequence.read_frame(t)))

        first = min(inputs, default=None)
        for t, probs in enumerate(propagator.run(features(), given=given)):
            if t == first and self.config.first_output == "given":
                yield probs, inputs[t]  # DINO and INO write the first mask itself
                continue
            mask = propagator.to_mask(probs, sequence.image_size)
            if t in inputs and self.config.first_output == "given":
                mask = np.where(inputs[t] > 0, inputs[t], mask)
            yield probs, mask


def build_extractor(config: ml_collections.ConfigDict) -> FeatureExtractor:
    """The feature extractor named by `config.features.name`."""
    name = config.features.name
    if name == "lab_pixels":
        return pixel_features.LabPixelFeatures(config.features.stride, config.features.mode)
    raise ValueError(f"config.features.name={name!r}; expected 'lab_pixels'")


def load_sequences(data: ml_collections.ConfigDict) -> list[sequence_lib.VideoSequence]:
    """The evaluation videos of `config.data`; the synthetic default when no root is given."""
    names = [s for s in data.sequences.split(",") if s] or None
    if data.layout == "youtube_vos":
        if not data.youtube_vos_root:
            raise ValueError("config.data.youtube_vos_root is required with layout='youtube_vos'")
        return youtube_vos.load_youtube_vos(data.youtube_vos_root, data.youtube_vos_split, names)
    if data.layout != "davis":
        raise ValueError(f"config.data.layout={data.layout!r}; expected 'davis' or 'youtube_vos'")
    return davis.load_davis(davis_root(data), data.imageset, data.resolution, names)


def davis_root(data: ml_collections.ConfigDict) -> pathlib.Path:
    """config.data.davis_root, or the synthetic default exported to the DAVIS-2017 layout."""
    if data.davis_root:
        return pathlib.Path(data.davis_root)
    if data.imageset != "2017/val":
        raise ValueError(
            f"config.data.imageset={data.imageset!r}: the synthetic default has only '2017/val'; "
            "set config.data.davis_root to evaluate another split"
        )
    synth = data.synthetic
    root = synthetic_export.default_davis_root(
        num_train=0,
        num_val=synth.num_val,
        num_frames=synth.num_frames,
        height=synth.height,
        width=synth.width,
        seed=synth.seed,
        config=synth.level,
        resolution=data.resolution,
    )
    logging.info("No config.data.davis_root: evaluating the synthetic default at %s", root)
    return root


def evaluate_sequences(
    segmenter: Segmenter,
    sequences: Sequence[sequence_lib.VideoSequence],
    results_dir: pathlib.Path,
    *,
    layout: str = "davis",
    write_pngs: bool = True,
    num_overlays: int = 4,
) -> tuple[dict | None, dict[str, np.ndarray]]:
    """Segments and scores every sequence.

    Args:
      segmenter: yields the masks of a sequence.
      sequences: the videos; those with a ground truth on every output frame are scored.
      results_dir: PNGs go to `results_dir/<seq>/<frame>.png` (DAVIS layout) or the YouTube-VOS
        server layout.
      layout: 'davis' or 'youtube_vos'.
      write_pngs: write the predicted masks.
      num_overlays: how many sequences get an overlay image (middle frame) in the summaries.

    Returns:
      (results in the schema of golden.json, or None when no sequence has a ground truth;
       overlay images name -> uint8 [H, W, 3]).
    """
    writer = results_writer.ResultsWriter(results_dir, layout=layout) if write_pngs else None
    per_object = {}
    overlays = {}
    total = sum(len(s.output_frames) for s in sequences)
    bar = tqdm.tqdm(total=total, unit="frame", desc="segment", dynamic_ncols=True, file=sys.stdout)
    start = time.perf_counter()
    for seq in sequences:
        bar.set_postfix(seq=seq.name)
        outputs = set(seq.output_frames)
        scored = layout == "davis" and len(seq.annotated_frames) == len(seq)
        middle = seq.output_frames[len(seq.output_frames) // 2]
        masks = segmenter.segment(seq)
        if isinstance(seq, user_video.UserVideo):
            masks = keep_given_masks(seq, masks)
        predictions = {}
        for t, mask in enumerate(masks):
            if t not in outputs:
                continue
            if scored or t == middle:  # a video without ground truth is not held in memory
                predictions[t] = mask
            if writer is not None:
                writer.write(seq, t, mask)
            bar.update(1)
        if len(overlays) < num_overlays:
            overlays[seq.name] = image_io.overlay(seq.read_frame(middle), predictions[middle])
        if scored:
            ground_truth = np.stack([seq.read_mask(t) for t in range(len(seq))])
            pred = np.stack([predictions[t] for t in range(len(seq))])
            scores = davis_protocol.evaluate_sequence(ground_truth, pred, name=seq.name)
            per_object.update({f"{seq.name}_{obj}": s for obj, s in scores.items()})
    bar.close()
    elapsed = time.perf_counter() - start
    logging.info("Segmented %d frames in %.1f s (%.1f frames/s)", total, elapsed, total / elapsed)
    return (davis_protocol.summarize(per_object) if per_object else None), overlays


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Evaluates the configured feature extractor with label propagation; returns the results."""
    workdir = pathlib.Path(workdir)
    results_dir = workdir / "results"
    sequences = load_sequences(config.data)
    segmenter = PropagationSegmenter(
        build_extractor(config),
        propagation.from_config_dict(config.propagation),
    )
    results, overlays = evaluate_sequences(
        segmenter,
        sequences,
        results_dir,
        layout=config.data.layout,
        write_pngs=config.eval.write_pngs,
        num_overlays=config.eval.num_overlay_sequences,
    )
    if config.data.layout == "youtube_vos" and config.eval.write_pngs:
        archive = results_writer.make_youtube_vos_submission(results_dir, sequences)
        logging.info("YouTube-VOS submission (upload to the evaluation server): %s", archive)
    summary_writer = summaries.create_writer(workdir / "eval", just_logging=jax.process_index() > 0)
    if results is not None:
        report.write_all(results, results_dir)
        print(report.format_table(results))
        summary_writer.write_scalars(
            0, {f"eval/{k}": v for k, v in results.items() if k != "per_object"}
        )
    if overlays:
        summary_writer.write_images(
            0, {f"eval/overlay/{name}": image[None] for name, image in overlays.items()}
        )
    summary_writer.flush()
    summary_writer.close()
    return results


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        run(flags.FLAGS.config, flags.FLAGS.workdir)
    except image_io.DataError as e:  # bad data the user gave: one line, no traceback
        print(f"evaluate: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Defined here, not at import: vosjax.main imports this module and has flags of its own.
    config_flags.DEFINE_config_file("config", lock_config=True)
    flags.DEFINE_string("workdir", None, "Output folder for masks, CSVs and summaries.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
