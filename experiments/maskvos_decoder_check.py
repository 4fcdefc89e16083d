"""Can Mask-VOS's V and D learn to decode, and does inference decode as training taught?

  PYTHONPATH=. python experiments/maskvos_decoder_check.py --workdir=W/corr/trained --step=800 \
      [--train_imageset=2016/train --train_resolution=240p --train_sequences=] \
      [--steps=600 --batch=8 --crop=128 --short=240 --lr=1e-4 --eval_every=200] \
      [--sequences=blackswan,dog,parkour --frames=30 --short_side=240 \
       --variants=coarse,rounds0,trainlike]

A decoder-only check, not a self-supervised run: E is a correspondence checkpoint
(`--workdir`, a `configs/maskvos/corr_r18.py` run, `--step`), frozen (inference-mode BatchNorm,
no gradient); V and D (`configs/maskvos/davis2016.py` widths) start from random weights and learn
L_seg alone from the *annotations* of DAVIS2016 sequences, one object per clip (the annotated
one), clips of `clip_len` frames with `frame_gap` (the config's 5 and 2), teacher forcing over
`seg_queries` query frames (2), crops of `--crop` pixels from frames resized to `--short` pixels
on their short side (default `--crop`, as the joint runs' `min_short`), random horizontal flips.
Every `--eval_every` steps and at the end it decodes the first `--frames` frames of the
`--sequences` (DAVIS2016 480p val) at each of `--short_sides` with the variants of
`maskvos_decoding_diagnosis.py` and prints J-Mean and the foreground fraction per sequence.

Two uses:
- `--train_imageset=2016/val --train_resolution=480p --train_sequences=blackswan` with
  `--sequences=blackswan`: V and D fit the very sequence they decode. If decoding is consistent
  with training, the decoded masks beat the coarse masks they start from; if they do not even
  there, inference departs from training somewhere.
- the default (the 30 train sequences): does the decoder, trained on objects for longer than
  the joint runs, beat its coarse masks on unseen videos?
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from PIL import Image

from configs.maskvos import davis2016
from experiments import maskvos_decoding_diagnosis as diagnosis
from vosjax import train
from vosjax.data import davis, transforms
from vosjax.methods.maskvos import mask_data, method, segmentation
from vosjax.ops import color

_TRAIN_IMAGESET = flags.DEFINE_string("train_imageset", "2016/train", "DAVIS split to learn from.")
_TRAIN_RESOLUTION = flags.DEFINE_string("train_resolution", "240p", "Its resolution folder.")
_TRAIN_SEQUENCES = flags.DEFINE_string("train_sequences", "", "Names in it ('': all).")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps of V and D.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per step.")
_CROP = flags.DEFINE_integer("crop", 128, "Crop side.")
_SHORT = flags.DEFINE_integer(
    "short", 0, "Frames are resized to this short side first (0: --crop)."
)
_LR = flags.DEFINE_float("lr", 1e-4, "Adam learning rate (b1 0.5, as the config).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 200, "Decode the val frames every N steps.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "Print the mean loss every N steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Clip sampling and V / D initialisation.")
_SIDES = flags.DEFINE_string(
    "short_sides", "", "Decoding short sides, e.g. 128,240 ('': --short_side)."
)
_SAVE = flags.DEFINE_string("save_head", "", "Write V and D here (.npz) after training.")
_LOAD = flags.DEFINE_string(
    "load_head", "", "Start V and D from this .npz (--steps=0: decode only)."
)


def _resize_short(image: np.ndarray, short: int, resample: int) -> np.ndarray:
    h, w = transforms.short_side_size(image.shape[:2], short)
    return np.asarray(Image.fromarray(image).resize((w, h), resample))


def load_videos(short: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frames uint8 [N, H, W, 3], object masks uint8 [N, H, W] in {0, 1}) per train video,
    resized to short side `short` (bilinear frames, nearest masks; void counts as background)."""
    names = _TRAIN_SEQUENCES.value.split(",") if _TRAIN_SEQUENCES.value else None
    videos = []
    for seq in davis.load_davis(
        diagnosis._DAVIS.value, _TRAIN_IMAGESET.value, _TRAIN_RESOLUTION.value, names
    ):
        frames, masks = [], []
        for t in range(len(seq)):
            frames.append(_resize_short(seq.read_frame(t), short, Image.BILINEAR))
            ids = seq.read_mask(t)
            masks.append(
                _resize_short(((ids > 0) & (ids < 255)).astype(np.uint8), short, Image.NEAREST)
            )
        videos.append((np.stack(frames), np.stack(masks)))
    return videos


def sample_batch(
    videos: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    batch: int,
    crop: int,
    clip_len: int,
    gap: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips uint8 [B, T, S, S, 3] and block-mode labels uint8 [B, T, S/8, S/8]."""
    clips, labels = [], []
    span = (clip_len - 1) * gap + 1
    while len(clips) < batch:
        frames, masks = videos[rng.integers(len(videos))]
        n, h, w = masks.shape
        step = gap if n >= span else 1
        start = rng.integers(max(1, n - (clip_len - 1) * step))
        idx = np.minimum(start + step * np.arange(clip_len), n - 1)
        y, x = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
        clip = frames[idx, y : y + crop, x : x + crop]
        mask = masks[idx, y : y + crop, x : x + crop]
        if not mask[0].any():
            continue  # nothing to propagate from the first frame
        if rng.random() < 0.5:
            clip, mask = clip[:, :, ::-1], mask[:, :, ::-1]
        clips.append(clip)
        labels.append(mask_data.block_mode(np.ascontiguousarray(mask)))
    return np.stack(clips), np.stack(labels)


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """The inverse of `train.flat_by_path` on a pure dict (integer keys come back as ints, as
    nnx's layer lists)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, last = [int(k) if k.isdigit() else k for k in path.split("/")]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return tree


def build_model(config: Any) -> method.MaskVOSModel:
    """E from `--workdir` / `--step`, V and D freshly initialised (seed `--seed`)."""
    config.seed = _SEED.value
    config.init_from.workdir = diagnosis._WORKDIR.value
    config.init_from.step = diagnosis._STEP.value
    config.init_from.into = "encoder"
    trainer = train.Trainer(config, method.MaskVOS(config))
    state = train.init_from_checkpoint(config, trainer, trainer.init_state())
    return trainer.model(state)


def make_step(encoder: nnx.Module, head: nnx.Module, tx: optax.GradientTransformation, loss):
    """The jitted step (params, rest, opt_state, clips, labels) of V and D, E frozen."""
    encoder_graph, encoder_state = nnx.split(encoder)
    head_graph, _, _ = nnx.split(head, nnx.Param, ...)

    @jax.jit
    def step(params, rest, opt_state, clips, labels):
        b, t = clips.shape[:2]
        frames = color.normalize_frames(clips)
        frozen = nnx.merge(encoder_graph, encoder_state)
        outputs = frozen(frames.reshape(b * t, *frames.shape[2:]), train=False)
        features = {
            k: jax.lax.stop_gradient(v).reshape(b, t, *v.shape[1:]) for k, v in outputs.items()
        }

        def loss_fn(params):
            # Fresh Variables under this trace, so that V's BatchNorm may update them.
            module = nnx.merge(head_graph, params, jax.tree.map(lambda x: x, rest))
            value, aux = segmentation.segmentation_loss(
                module,
                frames,
                features,
                labels.astype(jnp.int32),
                jnp.ones((b,), jnp.int32),
                max_objects=1,
                num_queries=loss.seg_queries,
                temperature=loss.seg_temperature,
                coarse=loss.coarse,
                train=True,
            )
            _, _, new_rest = nnx.split(module, nnx.Param, ...)
            return value, (aux, new_rest)

        (_, (aux, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, aux

    return step


def main(argv: Sequence[str]) -> None:
    del argv
    config = davis2016.get_config()
    model = build_model(config)
    encoder, head = model.encoder, model.head
    crop, short = _CROP.value, _SHORT.value or _CROP.value
    if short < crop:
        raise ValueError(f"--short={short}: expected >= --crop={crop}")
    videos = load_videos(short)
    print(f"{len(videos)} videos, {sum(len(m) for _, m in videos)} frames at short side {short}")
    eval_sequences = diagnosis.first_frames(
        davis.load_davis(
            diagnosis._DAVIS.value, "2016/val", "480p", diagnosis._SEQUENCES.value.split(",")
        ),
        diagnosis._FRAMES.value,
    )
    sides = [int(x) for x in (_SIDES.value or str(diagnosis._SHORT.value)).split(",")]
    variants = diagnosis._VARIANTS.value.split(",")

    if _LOAD.value:
        with np.load(_LOAD.value) as saved:
            state = nnx.state(head)
            nnx.replace_by_pure_dict(
                state, unflatten({k: jnp.asarray(saved[k]) for k in saved.files})
            )
            nnx.update(head, state)

    def decode(step: int) -> None:
        for side in sides:
            print(f"-- decoding after {step} steps, short side {side}", flush=True)
            decoding = dict(config.eval.decoding) | {"short_side": side}
            diagnosis.run_variants(encoder, head, decoding, eval_sequences, variants)

    tx = optax.adam(_LR.value, b1=config.optim.b1, b2=config.optim.b2)
    _, params, rest = nnx.split(head, nnx.Param, ...)
    opt_state = tx.init(params)
    step_fn = make_step(encoder, head, tx, config.loss)
    rng = np.random.default_rng(_SEED.value)
    data = config.data
    logs, start = [], time.perf_counter()
    for step in range(1, _STEPS.value + 1):
        clips, labels = sample_batch(videos, rng, _BATCH.value, crop, data.clip_len, data.frame_gap)
        params, rest, opt_state, aux = step_fn(params, rest, opt_state, clips, labels)
        logs.append(aux)
        if step % _LOG_EVERY.value == 0:
            mean = jax.tree.map(lambda *x: float(np.mean(x)), *logs)
            print(
                f"step {step}: seg_loss {mean['seg_loss']:.3f} seg_acc {mean['seg_acc']:.3f} "
                f"({(time.perf_counter() - start) / step:.2f} s/step)",
                flush=True,
            )
            logs = []
        if step % _EVAL_EVERY.value == 0 or step == _STEPS.value:
            nnx.update(head, params, rest)
            decode(step)
    if _STEPS.value == 0:
        decode(0)
    if _SAVE.value:
        np.savez(_SAVE.value, **train.flat_by_path(nnx.to_pure_dict(nnx.state(head))))


if __name__ == "__main__":
    flags.FLAGS.set_default("variants", "coarse,rounds0,trainlike")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
