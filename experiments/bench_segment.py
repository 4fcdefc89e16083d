"""Speed and peak memory of `python -m vosjax.segment` at 480p and 1080p, and whether the memory
stays bounded as the video grows (N frames vs 4N frames).

  python experiments/bench_segment.py [--frames=20] [--sizes=480,1080] [--max_side=640]
      [--sequence=blackswan] [--davis_root=../shared/data/DAVIS2016]
      [-- --config=CONFIG --workdir=W]   (flags after '--' go to vosjax.segment: a model)

The videos are mp4 files made from a DAVIS-2016 sequence's 480p frames played forwards and
backwards until N (then 4N) frames, upscaled (bicubic) to the height asked for; the mask is its
first annotation, resized likewise (nearest). Each run is its own process: the table gives the
command's frames/s (the segmentation loop: decoding, segmenting, writing the masks and both
overlays; the first frame's compilation included), the whole process's wall time, and the peak
resident memory the command reports (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

import cv2

from vosjax.data import image_io

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_video(
    frames_dir: pathlib.Path, mask: pathlib.Path, height: int, count: int, out: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `out/<height>p_<count>.mp4` and its first mask; returns (video, mask)."""
    files = sorted(frames_dir.glob("*.jpg"))
    order = files + files[-2:0:-1]  # forwards, then backwards: no jump in the motion
    first = cv2.imread(str(files[0]))
    width = round(first.shape[1] * height / first.shape[0] / 2) * 2
    video = out / f"{height}p_{count}.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 24, (width, height))
    for t in range(count):
        frame = cv2.imread(str(order[t % len(order)]))
        if frame.shape[0] != height:
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC)
        writer.write(frame)
    writer.release()
    ids = image_io.read_mask(mask)
    ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
    mask_out = out / f"{height}p_mask.png"
    image_io.write_mask(mask_out, ids)
    return video, mask_out


def run_segment(
    video: pathlib.Path, mask: pathlib.Path, out: pathlib.Path, extra: list[str]
) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "vosjax.segment",
        f"--video={video}",
        f"--mask={mask}",
        f"--out={out}",
        *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    found = re.search(
        r"(\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\), peak memory (\d+) MiB", done.stdout
    )
    if not found:
        raise RuntimeError(f"no summary line in the output:\n{done.stdout[-2000:]}")
    frames, seconds, fps, peak = found.groups()
    return {"frames": int(frames), "fps": float(fps), "wall_s": wall, "peak_mib": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20, help="N (the long runs have 4N)")
    parser.add_argument("--sizes", default="480,1080", help="frame heights")
    parser.add_argument("--max_side", type=int, default=640, help="0: no --max_side runs")
    parser.add_argument("--sequence", default="blackswan")
    parser.add_argument("--davis_root", default=str(REPO.parent / "shared/data/DAVIS2016"))
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    root = pathlib.Path(args.davis_root)
    frames_dir = root / "JPEGImages/480p" / args.sequence
    mask = root / "Annotations/480p" / args.sequence / "00000.png"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    cores = len(os.sched_getaffinity(0))
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu}, {cores} cores")
    model = " ".join(extra) or "raw pixels (lab_pixels:dino)"
    print(f"# frames: {args.sequence} forwards and backwards, upscaled; model: {model}")
    print("| frames (H) | --max_side | frames | frames/s | wall s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for height in (int(h) for h in args.sizes.split(",")):
            for max_side in [None] + ([args.max_side] if args.max_side else []):
                if max_side and max_side >= height * 16 / 9:
                    continue
                for count in (args.frames, 4 * args.frames):
                    video, first = make_video(frames_dir, mask, height, count, tmp)
                    flags = [f"--max_side={max_side}"] if max_side else []
                    result = run_segment(video, first, tmp / "out", flags + extra)
                    print(
                        f"| {height}p | {max_side or '-'} | {result['frames']} | "
                        f"{result['fps']:.2f} | {result['wall_s']:.0f} | "
                        f"{result['peak_mib']:.0f} |",
                        flush=True,
                    )
                    video.unlink()


if __name__ == "__main__":
    main()
