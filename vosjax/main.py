"""Trains a method (resuming from --workdir after any interruption) or evaluates a checkpoint.

python -m vosjax.main --config=configs/maskvos/corr_r18.py --workdir=W
python -m vosjax.main --config=configs/maskvos/corr_r18.py --workdir=W --mode=eval [--step=N]
    [--eval_dir=E]   (E: this evaluation's results and summaries, e.g. at another resolution)
python -m vosjax.main --config=configs/maskvos/r18.py --workdir=W   (clustering rounds inside)
python -m vosjax.main --config=configs/ino/vits8_davis2016.py --workdir=W
python -m vosjax.main --config=configs/shls/davis2016_frames.py --workdir=W   (still images)

Exit status: 0 when training (or the evaluation) finished; 75 (`PREEMPTED_EXIT_CODE`,
EX_TEMPFAIL) when SIGTERM stopped training after its checkpoint was saved completely (start the
same command again to resume); 1 on a failure.

One run at a time owns a workdir: training (and `--mode=eval` without `--eval_dir`, which
writes its results there) holds `W/.vosjax.lock` and refuses to start beside another run
(`vosjax.workdir_lock`). `--mode=eval --eval_dir=E` only reads W and may run beside training.
W records the config it was made with (`W/config.json`, `W/run_info.json`); a resume or an
evaluation with a config that does not fit it stops at start (`vosjax.run_record`).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Sequence

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vosjax import run_record, sharding, train, workdir_lock
from vosjax.data import image_io

# EX_TEMPFAIL (sysexits.h): stopped by SIGTERM with its checkpoint saved, to be resumed.
PREEMPTED_EXIT_CODE = 75
_CONFIG = config_flags.DEFINE_config_file("config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, summaries and results go here.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and evaluate), or evaluate.")
_STEP = flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: latest).")
_EVAL_DIR = flags.DEFINE_string(
    "eval_dir",
    None,
    "--mode=eval: the folder for this evaluation's results (step_N/) and summaries (default: "
    "the workdir's eval_results/ and the workdir), so that evaluating a checkpoint with other "
    "settings keeps the results already there.",
)


def build_method(config: ml_collections.ConfigDict) -> train.Method:
    """The method named by `config.method` (imported only when chosen)."""
    if config.method == "maskvos_correspondence":
        from vosjax.methods.maskvos import correspondence

        return correspondence.Correspondence(config)
    if config.method == "maskvos":
        from vosjax.methods.maskvos import method

        return method.MaskVOS(config)
    if config.method == "ino":
        from vosjax.methods.ino import method

        return method.INO(config)
    if config.method == "shls":
        from vosjax.methods.shls import method

        return method.SHLS(config)
    raise ValueError(f"config.method={config.method!r}; expected one of {METHODS}")


METHODS = ("maskvos_correspondence", "maskvos", "ino", "shls")


def training_source(config: ml_collections.ConfigDict):
    """The training videos of `config.data` (path, or the synthetic default; synthetic_mix)."""
    from vosjax.data import clip_sources

    data = config.data
    if data.path and not data.path.startswith("tfds:") and not pathlib.Path(data.path).exists():
        raise FileNotFoundError(f"config.data.path={data.path!r}: no such folder")
    source = clip_sources.open_source(
        data.path or None,
        imageset=data.imageset,
        resolution=data.resolution,
        synthetic_config=data.synthetic_config,
    )
    mix = float(data.get("synthetic_mix", 0.0))
    if mix:
        if not data.path:
            raise ValueError(
                f"config.data.synthetic_mix={mix} needs config.data.path: without a path every "
                "clip is already synthetic"
            )
        if not 0.0 < mix < 1.0:
            raise ValueError(f"config.data.synthetic_mix={mix}: expected a fraction in [0, 1)")
        synthetic = clip_sources.synthetic_frames(data.synthetic_config)
        source = clip_sources.mix_with_fraction(source, synthetic, mix)
        logging.info(
            "Training videos: %s mixed with %d synthetic videos; shares %s",
            data.path,
            len(synthetic),
            [round(f, 3) for f in source.fractions()],
        )
    return source


def clip_sampler(config: ml_collections.ConfigDict):
    """How clips are drawn from a video (`config.data`)."""
    from vosjax.data import clip_sampling

    data = config.data
    return clip_sampling.ClipSampler(
        num_frames=data.clip_len,
        frame_gap=data.frame_gap,
        mode=data.sample_mode,
        permute=data.permute,
    )


def data_iterator_factory(config: ml_collections.ConfigDict, method: train.Method):
    """Per-host batch size -> this host's checkpointable iterator of training batches.

    Video methods give a clip transform (`make_transform`); a method that learns from other
    items (SHLS: still images) gives its grain loader (`make_train_loader`).
    """
    from vosjax.data import pipeline

    if hasattr(method, "make_train_loader"):
        loader = method.make_train_loader()

        def loader_factory(host_batch_size: int):
            del host_batch_size
            return iter(
                pipeline.make_loader_dataset(
                    len(loader.source),
                    loader,
                    global_batch_size=config.batch_size,
                    seed=config.seed,
                    **pipeline.reading_options(config.data),
                )
            )

        return loader_factory

    source, sampler = training_source(config), clip_sampler(config)

    def factory(host_batch_size: int):
        del host_batch_size  # make_train_iterator splits the global batch per host itself.
        return pipeline.make_train_iterator(
            source,
            sampler=sampler,
            transform=method.make_transform(),
            global_batch_size=config.batch_size,
            seed=config.seed,
            **pipeline.reading_options(config.data),
        )

    return factory


def data_rounds(config: ml_collections.ConfigDict, workdir: str) -> train.DataRounds | None:
    """The training rounds of a method whose data depend on the model (Mask-VOS), else None."""
    if config.method != "maskvos":
        return None
    from vosjax.methods.maskvos import schedule

    cache_dir = config.schedule.cache_dir or pathlib.Path(workdir) / "pseudo_masks"
    return schedule.PseudoMaskRounds(
        config, training_source(config), clip_sampler(config), cache_dir
    )


def eval_fn(
    config: ml_collections.ConfigDict, method: train.Method, results_dir: str | pathlib.Path
):
    """J&F on the videos of `config.eval` (the synthetic default when it names no root); the
    tables (and PNGs) of step N go to `results_dir`/step_N."""
    from vosjax import evaluate

    return train.davis_eval_fn(
        method,
        evaluate.load_sequences(config.eval),
        pathlib.Path(results_dir),
        write_pngs=config.eval.write_pngs,
        num_overlays=config.eval.num_overlays,
    )


class UnwritableError(PermissionError):
    """A folder this run must write cannot be written (the flag to change is named)."""


def check_writable(folder: str | pathlib.Path, advice: str) -> None:
    """Fails unless a file can be created in `folder` (made if missing), naming `advice`.

    Creates and removes a file: permission bits do not stop root, and a read-only mount shows
    only when writing.

    Raises:
      UnwritableError: `folder` cannot be written.
    """
    try:
        image_io.make_writable_folder(folder)
    except OSError as e:
        raise UnwritableError(f"{folder}: cannot write there ({e.strerror or e}); {advice}") from e


def evaluation_lock(workdir: str, eval_dir: str | None) -> contextlib.AbstractContextManager:
    """`--mode=eval`: checks the folders it will write before any work; holds the workdir's lock
    when the results go there (no lock with `--eval_dir`: the workdir is only read)."""
    if eval_dir:
        check_writable(eval_dir, "choose another --eval_dir")
        return contextlib.nullcontext()
    if not pathlib.Path(workdir).is_dir():
        raise FileNotFoundError(f"--workdir={workdir}: no such folder, nothing to evaluate")
    advice = (
        "without --eval_dir the evaluation writes its results (eval_results/) and summaries into "
        "the workdir: pass --eval_dir=E to write them to E and only read the workdir"
    )
    for folder in (pathlib.Path(workdir), pathlib.Path(workdir) / "eval_results"):
        check_writable(folder, advice)
    return workdir_lock.hold(
        workdir,
        advice="An evaluation beside a training run: pass --eval_dir=E (results and summaries "
        "go to E; the workdir is only read).",
    )


def train_workdir(config: ml_collections.ConfigDict, workdir: str, method: train.Method) -> bool:
    """Trains in `workdir` (resuming it); True when SIGTERM stopped the run (checkpoint saved)."""
    if jax.process_count() == 1:  # (multi-host: the lock's failure to write is told to all)
        check_writable(
            workdir, "training writes its checkpoints and summaries there: choose another --workdir"
        )
    # Lock, then check the record: before data pipelines are built or anything restored.
    with workdir_lock.hold(workdir):
        trainer = train.Trainer(config, method)
        run_record.check(workdir, config, trainer.abstract_state, write=True)
        rounds = data_rounds(config, workdir)
        state = train.train_and_evaluate(
            config,
            workdir,
            method,
            None if rounds else data_iterator_factory(config, method),
            # -1: train only (no evaluation data needed; evaluate later with --mode=eval).
            eval_fn(config, method, pathlib.Path(workdir) / "eval_results")
            if config.eval_every_steps >= 0
            else None,
            rounds=rounds,
            trainer=trainer,
        )
    if not train.preempted(config, state):
        return False
    logging.warning(
        "Stopped by SIGTERM at step %d (checkpoint saved); exit status %d: run the same command "
        "to resume",
        int(state.step.addressable_data(0)),
        PREEMPTED_EXIT_CODE,
    )
    return True


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    method: train.Method,
    step: int | None,
    eval_dir: str | None,
) -> None:
    """Evaluates a checkpoint of `workdir` (results to `eval_dir`, default: the workdir)."""
    with evaluation_lock(workdir, eval_dir):
        trainer = train.Trainer(config, method)
        run_record.check(workdir, config, trainer.abstract_state, write=False)
        train.evaluate_checkpoint(
            config,
            workdir,
            method,
            eval_fn(config, method, eval_dir or pathlib.Path(workdir) / "eval_results"),
            step,
            summary_dir=eval_dir,
            trainer=trainer,
        )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config, workdir = _CONFIG.value, _WORKDIR.value
    sharding.initialize_distributed(config)  # before the lock: process 0 decides for all
    method = build_method(config)
    try:
        if _MODE.value == "eval":
            evaluate_workdir(config, workdir, method, _STEP.value, _EVAL_DIR.value)
        elif train_workdir(config, workdir, method):
            sys.exit(PREEMPTED_EXIT_CODE)
    except (workdir_lock.WorkdirLockedError, run_record.RunMismatchError, UnwritableError) as e:
        # The user's to resolve, at start: the message, not a traceback.
        sys.exit(f"vosjax.main: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
