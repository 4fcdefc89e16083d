"""INO on the DAVIS2016 train sequences at the paper's crops on one GPU, evaluated there or here.

The runs of experiments/ino_davis2016.sh with a GPU budget, for a GPU machine that has no
TensorFlow (so no summaries) and takes at most 64 MiB of files along with the checkout:

  # On the GPU, training and evaluation in one call, with the root that
  # experiments/davis_carry.py builds (every 4th training frame, hence --frame_gap=2: the
  # config's 8 at the full frame rate; the 480p val frames as they are). Only <variant>.json
  # (losses, steps, J&F per object) goes to --out; the weights stay in --weights.
  PYTHONPATH=. python experiments/ino_davis2016_gpu.py --stage=all --out=OUT \
      --weights=/tmp/ino_weights --davis=.davis/DAVIS2016_every4 --frame_gap=2 --minutes=1.5 \
      --variants=ino,no_in_generative,random_init
  # Or split: on the GPU, train each variant for --steps steps (or until --minutes run out) and
  # save the student's patch embedding, blocks 1..7 and final norm (all that block-7 features
  # read) as bf16 .npz files under --out, with each run's losses in <variant>.json ...
  PYTHONPATH=. python experiments/ino_davis2016_gpu.py --stage=train --out=OUT \
      --davis=DAVIS2016 --steps=1200 --batch=16
  # ... and anywhere: J&F of the saved students (block 7, short side --short_side, the ino
  # preset) on the 8 DAVIS2016 480p val sequences, official evaluation, added to <variant>.json.
  PYTHONPATH=. python experiments/ino_davis2016_gpu.py --stage=eval --out=OUT \
      --davis=../shared/data/DAVIS2016 --short_side=240

Variants: 'ino' (all four losses), 'no_in_generative' (MIM and affinity weights 0) and
'random_init' (no step: the same ViT as initialised by the same seed); the rest is
configs/ino/vits8_davis2016.py with no synthetic clips (they need TensorFlow Datasets).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from configs.ino import vits8_davis2016
from experiments import npz_shards
from vosjax import main as vosjax_main
from vosjax import optimizers, sharding, train
from vosjax.methods.ino import method
from vosjax.methods.ino import model as model_lib
from vosjax.ops import propagation

_STAGE = flags.DEFINE_enum(
    "stage", "train", ["train", "eval", "all"], "Train on a GPU, evaluate, or both in turn."
)
_OUT = flags.DEFINE_string("out", None, "Where <variant>.json (losses, steps, J&F) goes.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Where the .npz weights go / are; default --out.")
_DAVIS = flags.DEFINE_string("davis", "../shared/data/DAVIS2016", "DAVIS2016 root.")
_VARIANTS = flags.DEFINE_string("variants", "ino,no_in_generative", "Comma-separated runs.")
_VARIANT_NAMES = ("ino", "no_in_generative", "random_init")
_STEPS = flags.DEFINE_integer("steps", 1200, "Train steps per variant (the cosine's length).")
_MINUTES = flags.DEFINE_float("minutes", 4.0, "Wall-clock limit per variant's training loop.")
_BATCH = flags.DEFINE_integer("batch", 16, "Clips per step.")
_WORKERS = flags.DEFINE_integer("workers", 6, "grain worker processes.")
_EMA = flags.DEFINE_float("ema", 0.996, "Teacher momentum at step 0.")
_FRAME_GAP = flags.DEFINE_integer("frame_gap", 0, "Clip frame gap in stored frames; 0: config.")
_SHORT = flags.DEFINE_integer("short_side", 480, "Evaluation input short side.")
_SEQUENCES = flags.DEFINE_string("sequences", "", "Evaluate these val sequences ('' = all 8).")
_SMOKE = flags.DEFINE_bool("smoke", False, "The tiny :smoke ViT (to try the script on a CPU).")


def make_config(variant: str) -> ml_collections.ConfigDict:
    config = vits8_davis2016.get_config("smoke" if _SMOKE.value else None)
    config.data.imageset, config.data.resolution = "2016/train", "240p"
    config.batch_size = _BATCH.value
    config.data.path = _DAVIS.value
    config.data.synthetic_mix = 0.0
    config.data.num_workers = _WORKERS.value
    config.num_train_steps = _STEPS.value
    config.optim.warmup_steps = _STEPS.value // 10
    config.ema.base = _EMA.value
    if _FRAME_GAP.value:
        config.data.frame_gap = _FRAME_GAP.value
    if variant not in _VARIANT_NAMES:
        raise ValueError(f"--variants: unknown {variant!r}; expected one of {_VARIANT_NAMES}")
    if variant == "no_in_generative":
        config.loss.mim_weight = 0.0
        config.loss.affinity_weight = 0.0
    return config


def kept(path: str, block: int) -> bool:
    """The student weights that the features of `block` (1-based) depend on."""
    top = path.split("/")[0]
    if top == "blocks":
        return int(path.split("/")[1]) < block
    return top in ("patch_embed", "cls_token", "pos_embed", "norm")


def flat_params(module: nnx.Module, block: int) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    flat = {optimizers.param_path(path): np.asarray(x) for path, x in leaves}
    return {k: v for k, v in flat.items() if kept(k, block)}


def train_variant(variant: str, out: pathlib.Path, weights: pathlib.Path) -> None:
    config = make_config(variant)
    ino = method.INO(config)
    trainer = train.Trainer(config, ino)
    state = trainer.init_state()
    steps = 0 if variant == "random_init" else config.num_train_steps
    if steps:
        iterator = vosjax_main.data_iterator_factory(config, ino)(trainer.host_batch_size)
    log, start, step = [], time.perf_counter(), 0
    while step < steps:
        batch = sharding.shard_batch(next(iterator), trainer.mesh)
        state, metrics = trainer.train_step(state, batch, trainer.train_rng)
        step += 1
        # Checked every step: a slow input pipeline must not carry the loop past the limit.
        out_of_time = time.perf_counter() - start > 60 * _MINUTES.value
        if step % 50 == 0 or step == steps or out_of_time:
            values = {k: float(v) for k, v in metrics.compute().items()}
            elapsed = time.perf_counter() - start
            log.append({"step": step, "seconds": elapsed, **values})
            print(variant, step, f"{elapsed:.0f}s", {k: round(v, 3) for k, v in values.items()})
        if out_of_time:
            break
    model = trainer.model(state)
    params = flat_params(model.student, config.eval.block)
    shards = npz_shards.write_shards(params, weights, variant, step, "bfloat16")
    summary = {"variant": variant, "steps": step, "planned_steps": config.num_train_steps}
    summary |= {"batch": config.batch_size, "device": jax.devices()[0].device_kind, "log": log}
    (out / f"{variant}.json").write_text(json.dumps(summary))
    print(variant, "saved", shards, "shards after", step, "steps")


def evaluate_variant(variant: str, weights: pathlib.Path) -> dict:
    from vosjax import evaluate
    from vosjax.data import davis

    config = make_config(variant)
    model = model_lib.INOModel(config.model, rngs=nnx.Rngs(0))
    saved, _ = npz_shards.read_shards(weights / variant)
    state = nnx.state(model.student, nnx.Param)
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    restored = [
        saved[optimizers.param_path(path)] if optimizers.param_path(path) in saved else x
        for path, x in leaves
    ]
    absent = [
        k
        for k in (optimizers.param_path(p) for p, _ in leaves)
        if kept(k, config.eval.block) and k not in saved
    ]
    if absent:
        raise ValueError(f"{weights}: {variant}_*.npz lacks {absent[:3]} (of {len(absent)})")
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, restored))
    nnx.update(model.student, state)
    segmenter = evaluate.PropagationSegmenter(
        method.INOFeatures(model.student, block=config.eval.block, short_side=_SHORT.value),
        propagation.from_config_dict(config.eval.propagation),
    )
    names = [n for n in _SEQUENCES.value.split(",") if n] or None
    sequences = davis.load_davis(_DAVIS.value, "2016/val", "480p", names)
    start = time.perf_counter()
    results, _ = evaluate.evaluate_sequences(
        segmenter, sequences, weights / f"results_{variant}", write_pngs=False
    )
    return {"short_side": _SHORT.value, "seconds": time.perf_counter() - start, **results}


def main(argv: Sequence[str]) -> None:
    del argv
    out = pathlib.Path(_OUT.value)
    weights = pathlib.Path(_WEIGHTS.value or _OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    variants = _VARIANTS.value.split(",")
    for variant in variants:
        make_config(variant)  # an unknown variant fails before any training
    if _STAGE.value in ("train", "all"):
        for variant in variants:
            train_variant(variant, out, weights)
    if _STAGE.value in ("eval", "all"):
        for variant in variants:
            results = evaluate_variant(variant, weights)
            summary_file = out / f"{variant}.json"
            summary = json.loads(summary_file.read_text())
            summary["results"] = results
            summary_file.write_text(json.dumps(summary))
            print(
                f"{variant} ({summary['steps']} steps): J&F {results['J&F-Mean']:.3f} "
                f"J {results['J-Mean']:.3f} F {results['F-Mean']:.3f} "
                f"({results['seconds']:.0f} s at short side {results['short_side']})"
            )


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
