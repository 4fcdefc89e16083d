"""Mask-VOS pseudo masks against the DAVIS2016 train annotations: how object-like are they?

  # score every pseudo-mask set of a run (W/pseudo_masks/step_*)
  PYTHONPATH=. python experiments/maskvos_pseudo_masks_vs_gt.py score W/pseudo_masks

  # cluster the DAVIS train videos with a davis2016.py checkpoint's encoder, several configs
  # (M,position_weight,position_dim; ...), and score each
  PYTHONPATH=. python experiments/maskvos_pseudo_masks_vs_gt.py cluster W/checkpoints STEP \
      "5,1.0,24;10,1.0,24;16,0.3,24;7,1.0,0"

  # a control set: a copy of SET where every DAVIS video's masks are its annotations
  PYTHONPATH=. python experiments/maskvos_pseudo_masks_vs_gt.py replace SET OUT

`score` prints, averaged over the DAVIS2016 train videos of each set (the synthetic videos have
no annotations), the IoU with the annotated foreground (over all frames, at stride 8) of the best
single cluster and of the union of the clusters lying mostly (> 50 %) inside the foreground, the
mean cluster size and the foreground's size, both as shares of the frame. Clusters that follow
objects give IoUs near 1; spatial blobs give IoUs near the foreground's share.

`replace` writes OUT as a copy of the set SET (its meta.json included, so a run with the same
clustering config reuses it) with the masks of the DAVIS videos replaced by their annotations at
stride 8 (id 0 background, 1 the object; an 8 x 8 block is the object when most of its pixels
are). Training on it is a control that uses annotations, so it is not self-supervised: it shows
what mask-embedded learning does with object-like masks (experiments/maskvos_gt_control.sh).
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import numpy as np

from vosjax.data import davis
from vosjax.methods.maskvos import mask_data, pseudo_masks

DAVIS = pathlib.Path(__file__).resolve().parents[2] / "shared/data/DAVIS2016"
STRIDE = mask_data.STRIDE


def train_videos() -> list[str]:
    """The DAVIS2016 train sequence names."""
    return davis.read_imageset(DAVIS, "2016/train")


def annotations_at_stride(name: str, shape: tuple[int, int]) -> np.ndarray:
    """bool [T, h, w]: the 240p annotation of every frame, an 8 x 8 block true if mostly object."""
    sequence = davis.load_sequence(DAVIS, name, "240p")
    masks = np.stack([sequence.read_mask(t) == 1 for t in range(len(sequence))])
    height, width = (side * STRIDE for side in shape)
    pad = ((0, 0), (0, max(height - masks.shape[1], 0)), (0, max(width - masks.shape[2], 0)))
    masks = np.pad(masks, pad)[:, :height, :width].astype(np.uint8)
    return mask_data.block_mode(masks) == 1  # ties (32 of 64 pixels) go to the background


def score_video(labels: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float]:
    """(best-cluster IoU, inside-union IoU, mean cluster share, foreground share) of one video."""
    if labels.shape != gt.shape:
        raise ValueError(f"pseudo masks {labels.shape} and annotations {gt.shape} differ")
    best, sizes, inside = 0.0, [], np.zeros_like(gt)
    for cluster in np.unique(labels):
        member = labels == cluster
        sizes.append(member.mean())
        best = max(best, (member & gt).sum() / max((member | gt).sum(), 1))
        if (member & gt).sum() > 0.5 * member.sum():
            inside |= member
    union = (inside & gt).sum() / max((inside | gt).sum(), 1)
    return float(best), float(union), float(np.mean(sizes)), float(gt.mean())


def score(set_folder: pathlib.Path) -> np.ndarray:
    """Mean of `score_video` over the DAVIS2016 train videos of one pseudo-mask set."""
    rows = []
    for name in train_videos():
        labels = pseudo_masks.read_masks(
            set_folder / name, range(len(list((set_folder / name).glob("*.png"))))
        )
        rows.append(score_video(labels, annotations_at_stride(name, labels.shape[1:])))
    return np.mean(rows, axis=0)


def cluster(checkpoints: pathlib.Path, step: int, specs: str) -> None:
    """Scores clusterings of the DAVIS train videos by a davis2016.py checkpoint's encoder."""
    from configs.maskvos import davis2016
    from vosjax import checkpointing, train
    from vosjax.methods.maskvos import correspondence, method

    config = davis2016.get_config()
    trainer = train.Trainer(config, method.MaskVOS(config))
    with checkpointing.Checkpointer(checkpoints, handle_sigterm=False) as checkpointer:
        state, step = checkpointer.restore(trainer.abstract_state, step)
    extract = correspondence.KeyExtractor(trainer.model(state).encoder)
    names = train_videos()
    keys = []
    for name in names:
        sequence = davis.load_sequence(DAVIS, name, "240p")
        frames = np.stack([sequence.read_frame(t) for t in range(len(sequence))])
        keys.append(pseudo_masks.encode_video(extract, frames))
    print(f"encoder of step {step}")
    print("M   weight  dim  best-cluster IoU  inside-union IoU  cluster share  fg share")
    for spec in specs.split(";"):
        m, weight, dim = spec.split(",")
        cfg = pseudo_masks.ClusteringConfig(
            num_clusters=int(m), position_weight=float(weight), position_dim=int(dim)
        )
        rows = []
        for i, (name, k) in enumerate(zip(names, keys, strict=True)):
            labels = pseudo_masks.cluster_videos([k], cfg, [i])[0]
            rows.append(score_video(labels, annotations_at_stride(name, labels.shape[1:])))
        best, union, size, fg = np.mean(rows, axis=0)
        print(f"{m:3s} {weight:6s} {dim:4s} {best:16.3f} {union:17.3f} {size:14.3f} {fg:9.3f}")


def replace(set_folder: pathlib.Path, out: pathlib.Path) -> None:
    """Copies a set to `out` with the DAVIS train videos' masks replaced by their annotations."""
    if not (set_folder / pseudo_masks.META).is_file():
        raise FileNotFoundError(f"{set_folder}: not a complete pseudo-mask set (no meta.json)")
    shutil.copytree(set_folder, out)
    for name in train_videos():
        shape = pseudo_masks.read_masks(out / name, [0]).shape[1:]
        gt = annotations_at_stride(name, shape)
        shutil.rmtree(out / name)
        pseudo_masks.write_masks(out / name, gt.astype(np.uint8))


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "score":
        print("set            best-cluster IoU  inside-union IoU  cluster share  fg share")
        for root in argv[1:]:
            for folder in sorted(pathlib.Path(root).glob("step_*")):
                best, union, size, fg = score(folder)
                print(f"{folder.name:14s} {best:16.3f} {union:17.3f} {size:14.3f} {fg:9.3f}")
    elif len(argv) == 4 and argv[0] == "cluster":
        cluster(pathlib.Path(argv[1]), int(argv[2]), argv[3])
    elif len(argv) == 3 and argv[0] == "replace":
        replace(pathlib.Path(argv[1]), pathlib.Path(argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
