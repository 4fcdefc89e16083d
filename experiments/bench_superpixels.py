"""Benchmark of the superpixel label maps: frames/s and segment counts of SLIC and ISEC.

    PYTHONPATH=. python experiments/bench_superpixels.py          # 3 frames of each 480p video
    PYTHONPATH=. python experiments/bench_superpixels.py --frames=10 --threads=2

Times `slic` on 256 x 256 frames (the SHLS training setting: 300 segments, compactness 20,
sigma 1) and `slic` and `isec` (filter order 11, 4 iterations, the SHLS test setting) on 480p
frames. Frames come from ../shared/data/DAVIS2016/JPEGImages/480p (every sequence there, the
first `--frames` frames of each), or synthetic 480 x 854 frames when that folder is missing.
Decoding is not timed; every function runs once on the first frame before timing. By default
everything runs on one thread (OpenCV and BLAS), as in a grain worker. Prints a markdown table;
its last column, CPU seconds per wall second, says how many cores the run actually had.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--davis",
        type=pathlib.Path,
        default=None,
        help="DAVIS JPEGImages/480p folder (default: ../shared/data/...)",
    )
    parser.add_argument("--frames", type=int, default=3, help="frames per sequence")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the frames")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and BLAS threads")
    return parser.parse_args()


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    args = _parse()
    # Thread counts of BLAS must be set before numpy is imported.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import cv2
    import numpy as np

    from vosjax.data.superpixels import isec, slic

    cv2.setNumThreads(args.threads)
    root = pathlib.Path(__file__).resolve().parents[1]
    davis = args.davis or root.parent / "shared" / "data" / "DAVIS2016" / "JPEGImages" / "480p"
    frames = []
    if davis.is_dir():
        source = f"DAVIS-2016 480p ({davis})"
        for sequence in sorted(p for p in davis.iterdir() if p.is_dir()):
            for path in sorted(sequence.glob("*.jpg"))[: args.frames]:
                frames.append(np.ascontiguousarray(cv2.imread(str(path))[..., ::-1]))
    else:
        from vosjax.data.synthetic import generator

        source = "synthetic 480 x 854 (vosjax.data.synthetic, seed 0)"
        video = generator.generate_video(0, num_frames=args.frames * 8, height=480, width=854)
        frames = list(video.frames)
    small = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in frames]

    runs = [
        ("slic (n=300, m=20, sigma=1)", small, lambda im: slic.slic(im)),
        ("slic (n=300, m=20, sigma=1)", frames, lambda im: slic.slic(im)),
        ("isec (filter_order=11, num_iters=4)", frames, lambda im: isec.isec(im)),
    ]
    print(
        f"source: {source}; {len(frames)} frames; {args.repeats} timed passes; "
        f"{args.threads} thread(s); {_cpu_model()}, {os.cpu_count()} CPUs visible"
    )
    print()
    print(
        "| method | size | ms/frame (mean) | ms/frame (median) | frames/s | segments "
        "(mean ± std, min..max) | CPU s / wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, images, fn in runs:
        fn(images[0])
        times, counts = [], []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(args.repeats):
            for image in images:
                start = time.perf_counter()
                labels = fn(image)
                times.append(time.perf_counter() - start)
                counts.append(int(labels.max()) + 1)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        times_ms = np.array(times) * 1e3
        counts = np.array(counts)
        h, w = images[0].shape[:2]
        print(
            f"| {name} | {h}x{w} | {times_ms.mean():.1f} | {np.median(times_ms):.1f} | "
            f"{1e3 / times_ms.mean():.1f} | {counts.mean():.0f} ± {counts.std():.0f}, "
            f"{counts.min()}..{counts.max()} | {cpu / wall:.2f} |"
        )


if __name__ == "__main__":
    main()
