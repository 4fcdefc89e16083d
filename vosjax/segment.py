r"""Segments your own video: a mask per frame, an overlay video and an overlay sheet.

  python -m vosjax.segment --video=clip.mp4 --mask=first_frame_mask.png --out=out
  python -m vosjax.segment --video=frames/ --mask=00000.png --mask=40:new_object.png --out=out \
      --config=configs/maskvos/r18.py --workdir=W [--step=N] [--max_side=640]

--video: a video file (mp4, mov, avi, webm, mkv, m4v: what OpenCV's FFmpeg decodes) or a folder
of frames (one image per name stem, natural name order). --mask=PNG: the mask of the first frame,
an indexed PNG of object ids (DAVIS palette or plain ids) or a binary PNG (object 1).
--mask=FRAME:PNG (repeatable): objects that start on FRAME, a frame index 0..N-1 or a frame's
name (a folder's file stem, e.g. 00040, which wins over reading it as an index); ids given
earlier are left out of it, and a binary PNG there is a new object (the next free id).

Without --config: the raw-pixel baseline (configs/propagation/lab_pixels.py:dino, DINO's label
propagation of CIE Lab patches; --config=configs/propagation/lab_pixels.py:crw for another
preset). With --config and --workdir: that run's checkpoint (trained
with vosjax.main or imported with vosjax.import_weights; the latest, or --step) and the method's
own segmenter, as the config's `eval` fields set it.

Writes OUT/masks/<frame>.png (indexed PNGs, DAVIS palette, at the frames' size; frame names are
the folder's file stems, or 00000, 00001, ... for a video file), OUT/overlay.mp4 (the masks
blended over the frames, at the video's frame rate; a folder's: --fps, default 24) and
OUT/overlay.png (8 frames spread over the video). The output of a frame with a given mask is that
mask exactly for the objects that start there. Frames are read, segmented and written one at a
time, so memory does not grow with the video's length. --max_side=N segments frames downsized
so that their longer side is at most N; masks and overlays are written at the original size
(segmenters that work at the native size gain most: the baseline's DINO reader resizes every
frame to a short side of 480 anyway, so a smaller --max_side only blurs its input).
Every input is checked before any work.
"""

from __future__ import annotations

import dataclasses
import pathlib
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

import cv2
import ml_collections
import numpy as np
import tqdm
from absl import app, flags

from configs.propagation import lab_pixels
from vosjax import evaluate, run_record
from vosjax import main as main_lib
from vosjax.data import image_io, overlay_video, user_video
from vosjax.ops import propagation

DEFAULT_FPS = 24.0


class InputError(ValueError):
    """A flag or input that this command cannot use; the message names it."""


def parse_masks(values: Sequence[str]) -> dict[int | str, pathlib.Path]:
    """--mask values -> frame -> file: 'PNG' is frame 0's, 'FRAME:PNG' frame FRAME's.

    A value is read as FRAME:PNG when it holds a ':' that is not part of an existing file's
    path and the text before it has no path separator.

    Raises:
      InputError: no value, or two values for one frame.
    """
    if not values:
        raise InputError("--mask: expected at least one mask (--mask=PNG for the first frame)")
    masks: dict[int | str, pathlib.Path] = {}
    for value in values:
        frame, sep, path = value.partition(":")
        if not sep or not frame or "/" in frame or "\\" in frame or pathlib.Path(value).is_file():
            key, file = 0, pathlib.Path(value)
        else:  # kept as text: a frame's name, else an index (`user_video.frame_index`)
            key, file = frame, pathlib.Path(path)
        if key in masks:
            raise InputError(
                f"--mask: two masks for frame {key}: {masks[key]} and {file}; expected one per "
                "frame (--mask=FRAME:PNG for objects that start on a later frame)"
            )
        masks[key] = file
    return masks


def later_objects_limitation(config: ml_collections.ConfigDict) -> str | None:
    """Why the method's segmenter cannot take objects that start after frame 0, or None."""
    if config.get("method") == "maskvos" and config.eval.get("segmenter", "decoding") == "released":
        return (
            "config.eval.segmenter='released' (the released infer_mask.py protocol) takes objects "
            "of the first frame only; use --config.eval.segmenter=decoding"
        )
    if config.get("method") == "shls" and config.eval.get("protocol") == "released":
        return (
            "config.eval.protocol='released' (the released SHLS test loop) takes objects of the "
            "first frame only; use --config.eval.protocol=vosjax"
        )
    return None


def check_model_flags(
    config: ml_collections.ConfigDict | None, workdir: str | None, step: int | None
) -> None:
    """Raises InputError for --workdir/--step without --config, an unknown method, or a
    workdir without the checkpoint asked for."""
    if config is None or is_propagation_config(config):
        if workdir or step is not None:
            raise InputError(
                f"--workdir={workdir} / --step={step} need --config, the training config the "
                "run was trained or imported with"
            )
        return
    if not workdir:
        raise InputError("--config needs --workdir: the run whose checkpoint segments the video")
    if config.get("method") not in main_lib.METHODS:
        raise InputError(
            f"--config: config.method={config.get('method')!r}; expected one of "
            f"{main_lib.METHODS} (a training config; the raw-pixel baseline needs no --config)"
        )
    steps = run_record.checkpoint_steps(workdir)
    if not steps or (step is not None and step not in steps):
        wanted = "no checkpoint" if step is None else f"no checkpoint of step {step}"
        raise InputError(
            f"--workdir={workdir}: {wanted} in {pathlib.Path(workdir) / 'checkpoints'} "
            f"(saved steps: {steps}); expected a run trained with vosjax.main or imported with "
            "vosjax.import_weights"
        )


def is_propagation_config(config: ml_collections.ConfigDict) -> bool:
    """A `vosjax.evaluate` config (configs/propagation/): features and propagation, no model."""
    return "method" not in config and "features" in config and "propagation" in config


def baseline_segmenter(
    config: ml_collections.ConfigDict | None = None,
) -> evaluate.PropagationSegmenter:
    """Label propagation of a configs/propagation/ config (default: lab_pixels.py:dino, CIE Lab
    patches with DINO's protocol)."""
    config = config or lab_pixels.get_config("dino")
    return evaluate.PropagationSegmenter(
        evaluate.build_extractor(config), propagation.from_config_dict(config.propagation)
    )


def restored_segmenter(
    config: ml_collections.ConfigDict, workdir: str, step: int | None
) -> tuple[evaluate.Segmenter, int]:
    """`method.make_segmenter(model)` with the model of the run's checkpoint (latest or `step`)."""
    from vosjax import checkpointing, train

    train.validate_config(config)
    method = main_lib.build_method(config)
    trainer = train.Trainer(config, method)
    directory = pathlib.Path(workdir) / "checkpoints"
    # A reader beside a training run: damaged steps are skipped, never moved (the run's job).
    with checkpointing.Checkpointer(
        directory, handle_sigterm=False, move_damaged=False
    ) as checkpointer:
        state, step = checkpointer.restore(trainer.abstract_state, step)
    return method.make_segmenter(trainer.model(state)), step


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What `segment_video` wrote."""

    masks: pathlib.Path
    overlay_video: pathlib.Path
    overlay_sheet: pathlib.Path
    num_frames: int
    seconds: float


def segment_video(
    video: user_video.UserVideo,
    segmenter: evaluate.Segmenter,
    out: pathlib.Path,
    *,
    fps: float,
    max_side: int | None = None,
) -> Outputs:
    """Segments `video` frame by frame and writes the masks, overlay.mp4 and overlay.png.

    Args:
      video: the video and its given masks.
      segmenter: yields one mask per frame of the video it is given.
      out: the output folder.
      fps: the overlay video's frame rate.
      max_side: segment frames downsized to this longer side (masks come back at full size).

    Raises:
      RuntimeError: the segmenter yields a number of masks other than the frame count.
    """
    size = tuple(video.image_size)
    work = video.downsized(max_side) if max_side else video
    masks: Iterator[np.ndarray] = iter(segmenter.segment(work))
    if work is not video:
        masks = (cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST) for m in masks)
    masks = evaluate.keep_given_masks(video, masks)
    mask_dir = out / "masks"
    sheet = overlay_video.OverlaySheet(len(video), size)
    count = 0
    start = time.perf_counter()
    with (
        overlay_video.OverlayVideoWriter(out / "overlay.mp4", fps, size) as writer,
        tqdm.tqdm(total=len(video), unit="frame", desc="segment", file=sys.stdout) as bar,
    ):
        for t, mask in enumerate(masks):
            if t >= len(video):
                break
            frame = video.read_frame(t)
            name = video.frame_names[t]
            image_io.write_mask(mask_dir / f"{name}.png", mask)
            writer.write(frame, mask)
            sheet.add(t, name, frame, mask)
            count += 1
            bar.update(1)
    if count != len(video):
        raise RuntimeError(
            f"{video.source}: the segmenter gave {count} masks for {len(video)} frames"
        )
    sheet_path = sheet.save(out / "overlay.png")
    return Outputs(mask_dir, writer.path, sheet_path, count, seconds=time.perf_counter() - start)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    video: str | pathlib.Path,
    masks: Mapping[int | str, str | pathlib.Path],
    out: str | pathlib.Path,
    *,
    config: ml_collections.ConfigDict | None = None,
    workdir: str | None = None,
    step: int | None = None,
    max_side: int | None = None,
    fps: float | None = None,
) -> Outputs:
    """The command: checks every input, then segments and writes (see the module doc).

    Raises:
      InputError, DataError: a flag or an input file that cannot be used, before any work.
    """
    if max_side is not None and max_side < 8:
        raise InputError(f"--max_side={max_side}: expected at least 8 pixels")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps={fps}: expected a positive frame rate")
    check_model_flags(config, workdir, step)
    sequence = user_video.load_user_video(video, masks)
    starts = sequence.start_frames
    limitation = None if config is None else later_objects_limitation(config)
    if limitation and any(start != 0 for start in starts.values()):
        late = {i: sequence.frame_names[s] for i, s in starts.items() if s != 0}
        raise InputError(
            f"objects {late} (id: frame) start after the first frame, but {limitation}"
        )
    out = pathlib.Path(out)
    try:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out={out}: cannot create the output folder ({e})") from e
    names = set(sequence.frame_names)
    stale = sorted(p.name for p in (out / "masks").glob("*.png") if p.stem not in names)
    if stale:
        print(
            f"Note: {out / 'masks'} holds {len(stale)} PNGs of no frame of this video "
            f"({stale[0]}, ...); they are left there"
        )
    if config is None:
        segmenter, model = baseline_segmenter(), "raw pixels (lab_pixels:dino)"
    elif is_propagation_config(config):
        segmenter = baseline_segmenter(config)
        model = f"{config.features.name} features, {config.propagation.preset} propagation"
    else:
        segmenter, restored = restored_segmenter(config, workdir, step)
        model = f"{config.method}, step {restored} of {workdir}"
    print(
        f"Segmenting {sequence.source}: {len(sequence)} frames of {sequence.image_size[1]}x"
        f"{sequence.image_size[0]}, objects (id: first frame) "
        f"{ {i: sequence.frame_names[s] for i, s in starts.items()} }, with {model}"
        + (f", frames downsized to a longer side of {max_side}" if max_side else "")
    )
    outputs = segment_video(
        sequence, segmenter, out, fps=fps or sequence.fps or DEFAULT_FPS, max_side=max_side
    )
    print(
        f"{outputs.num_frames} frames in {outputs.seconds:.1f} s "
        f"({outputs.num_frames / outputs.seconds:.2f} frames/s), peak memory "
        f"{peak_rss_mib():.0f} MiB\n"
        f"  masks:         {outputs.masks}/<frame>.png\n"
        f"  overlay video: {outputs.overlay_video}\n"
        f"  overlay sheet: {outputs.overlay_sheet}"
    )
    return outputs


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    try:
        run(
            values.video,
            parse_masks(values.mask),
            values.out,
            config=values.config,
            workdir=values.workdir,
            step=values.step,
            max_side=values.max_side,
            fps=values.fps,
        )
    except (InputError, image_io.DataError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    # --config, --workdir and --step are vosjax.main's flags (defined when it is imported, and
    # read the same way here); its --mode and --eval_dir mean nothing to this command.
    for unused in ("mode", "eval_dir"):
        delattr(flags.FLAGS, unused)
    flags.FLAGS["config"].help = (
        "A training config (e.g. configs/maskvos/r18.py): segment with the checkpoint of "
        "--workdir and the method's segmenter. Default: the raw-pixel baseline."
    )
    flags.FLAGS["workdir"].help = "With --config: the run whose checkpoint segments the video."
    flags.FLAGS["step"].help = "With --config: the checkpoint step (default: the latest)."
    for name in ("config", "workdir", "step"):  # listed by --help with this module's flags
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    flags.DEFINE_string(
        "video", None, "A video file (mp4, mov, avi, webm, mkv) or a folder of frames."
    )
    flags.DEFINE_multi_string(
        "mask",
        None,
        "PNG: the first frame's mask (indexed ids or binary); FRAME:PNG (repeatable): objects "
        "that start on FRAME (an index, or a frame's file stem for a folder).",
    )
    flags.DEFINE_string("out", None, "Output folder: masks/, overlay.mp4, overlay.png.")
    flags.DEFINE_integer(
        "max_side", None, "Segment frames downsized to this longer side (outputs at full size)."
    )
    flags.DEFINE_float(
        "fps", None, f"overlay.mp4's frame rate (default: the video's; {DEFAULT_FPS:g} for frames)."
    )
    flags.mark_flags_as_required(["video", "mask", "out"])
    app.run(main)
