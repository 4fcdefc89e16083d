"""The generic data-parallel train loop; methods plug in a model and a loss.

A method (see `Method`) builds an `nnx.Module` and computes `loss_fn(model, batch, rng, step)`.
The loop keeps a `TrainState` pytree (graphdef outside), jits `train_step` once with the state
donated, shards every batch `P('data')` over the mesh, skips updates whose loss or gradients are
not finite, logs clu metrics, checkpoints with `vosjax.checkpointing` (periodic, on SIGTERM, at
the end) and resumes from the workdir automatically.

Randomness is stateless: the step's key is `fold_in(fold_in(key(seed), TRAIN_STREAM), step)`,
so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics, parameter_overview
from flax import nnx

from vosjax import checkpointing, optimizers, run_record, sharding, summaries, workdir_lock
from vosjax.data import sequence as sequence_lib

if TYPE_CHECKING:
    # clu's writers import TensorFlow, which a run without it replaces (`summaries`).
    from clu import metric_writers

INIT_STREAM = 0
TRAIN_STREAM = 1
REQUIRED_FIELDS = ("num_train_steps", "batch_size", "optim")


class Method(Protocol):
    """What a training method provides.

    Optional: `after_update(model, step)` (e.g. an EMA teacher), `make_segmenter(model)` (for
    evaluation) and `fp32_inputs`, the batch entries that mixed precision leaves in fp32.
    """

    def build_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        """The model; it must not store an `nnx.Rngs` (randomness comes from `loss_fn`'s rng)."""

    def loss_fn(
        self, model: nnx.Module, batch: Any, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, aux scalar metrics); may update non-Param variables in place."""


class DataRounds(Protocol):
    """Training in rounds whose data depend on the model (Mask-VOS: pseudo masks re-clustered
    with the current encoder at the start of every round).

    Attributes:
      starts: first step of every round, increasing, starting with 0.
    """

    starts: Sequence[int]

    def prepare(
        self, model: nnx.Module, round_start: int, step: int
    ) -> Callable[[int], Iterator[Any]]:
        """What round `round_start` needs (made with `model`, the state at `step`; `step` is
        later than `round_start` only when a resumed run finds the round's data missing) ->
        its data iterator factory (per-host batch size -> iterator)."""


def round_start(starts: Sequence[int], step: int) -> int:
    """The first step of the round that holds `step`."""
    return max(s for s in starts if s <= step)


# eval_fn(model, step) -> (scalar summaries, images name -> uint8 [H, W, 3]).
EvalFn = Callable[[nnx.Module, int], tuple[Mapping[str, float], Mapping[str, np.ndarray]]]


def default_config() -> ml_collections.ConfigDict:
    """The trainer's fields with defaults; method configs start from this and fill the rest."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_train_steps = ml_collections.FieldReference(None, field_type=int)
    config.batch_size = ml_collections.FieldReference(None, field_type=int)
    config.mesh = {"data": -1}
    config.optim = optimizers.default_config()
    config.mixed_precision = False  # bf16 compute, fp32 master weights
    config.max_consecutive_nonfinite = 10  # 0: never stop
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.async_checkpoints = True
    config.eval_every_steps = 0  # 0: only at the end; -1: never (train only, `--mode=eval` later)
    # Profiling on request: a trace of `num_steps` steps from `first_step` (and then every
    # `every_steps`, 0: once) in `workdir/plugins/profile`, for TensorBoard's profile tab.
    config.profile = {"enabled": False, "first_step": 10, "num_steps": 5, "every_steps": 0}
    # Start a fresh run from another run's checkpoint (e.g. Mask-VOS's encoder from a
    # correspondence run): `workdir`'s step (-1: latest) params and variables go into the
    # sub-module at `into` ('' = the whole model; 'encoder' = model.encoder). Ignored on resume.
    config.init_from = {"workdir": "", "step": -1, "into": ""}
    config.distributed = {
        "enabled": False,
        "coordinator_address": "",
        "num_processes": -1,
        "process_id": -1,
        "cpu_collectives": "gloo",
    }
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails at start, naming the field, when a required field is missing or out of range."""
    for name in REQUIRED_FIELDS:
        if name not in config or config[name] is None:
            raise ValueError(f"config.{name} is required (see vosjax.train.default_config)")
    for name in ("num_train_steps", "batch_size"):
        if int(config[name]) <= 0:
            raise ValueError(f"config.{name}={config[name]}: expected a positive integer")
    for name in ("log_every_steps", "checkpoint_every_steps"):
        if int(config.get(name, 1)) <= 0:
            raise ValueError(f"config.{name}={config.get(name)}: expected a positive integer")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (the graphdef lives outside).

    Attributes:
      params: the `nnx.Param` state (fp32 master weights).
      model_state: every other variable (BatchStat, EMA teacher, ...).
      opt_state: the optax state.
      step: int32 scalar, number of batches consumed.
      nonfinite_total: int32 scalar, updates skipped because of a non-finite loss or gradient.
      nonfinite_streak: int32 scalar, consecutive skipped updates up to now.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    nonfinite_total: jax.Array
    nonfinite_streak: jax.Array


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    def cast(x: Any) -> Any:
        if isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def _cast_inputs(batch: Any, dtype: jnp.dtype, keep: Sequence[str]) -> Any:
    """Casts the floating entries of a batch, except the dict entries named in `keep`."""
    if not isinstance(batch, Mapping):
        return _cast_floats(batch, dtype)
    return {k: v if k in keep else _cast_floats(v, dtype) for k, v in batch.items()}


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
    graphdef: nnx.GraphDef,
    method: Method,
    tx: optax.GradientTransformation,
    *,
    mixed_precision: bool = False,
    learning_rate: optax.Schedule | None = None,
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, metrics.Collection]]:
    """The (un-jitted) step: loss, gradients, update; a non-finite loss/gradient skips it.

    Args:
      graphdef: the model's graph definition (from `nnx.split`).
      method: provides `loss_fn` and optionally `after_update(model, step)`.
      tx: the optimiser.
      mixed_precision: compute the loss with bf16 parameters and floating inputs (except the
        batch entries the method names in its optional `fp32_inputs`, e.g. geometry that bf16's
        8-bit mantissa would round); gradients and the master parameters stay fp32.
      learning_rate: if given, its value is reported as the 'learning_rate' metric.

    Returns:
      `train_step(state, batch, rng) -> (state, metrics)` where `rng` is the train stream key
      (the step is folded in inside) and metrics is a clu Collection of averages over the
      applied (finite) updates, plus 'nonfinite', the fraction of skipped updates.
    """
    after_update = getattr(method, "after_update", None)
    keep_fp32 = tuple(getattr(method, "fp32_inputs", ()))

    def train_step(
        state: TrainState, batch: Any, rng: jax.Array
    ) -> tuple[TrainState, metrics.Collection]:
        rng = jax.random.fold_in(rng, state.step)

        def loss_of(params: Any) -> tuple[jax.Array, tuple[dict, Any]]:
            inputs = batch
            if mixed_precision:
                params = _cast_floats(params, jnp.bfloat16)
                inputs = _cast_inputs(batch, jnp.bfloat16, keep_fp32)
            # Fresh Variable objects created under this trace, so the forward pass may update them.
            model_state = jax.tree.map(lambda x: x, state.model_state)
            model = nnx.merge(graphdef, params, model_state)
            loss, aux = method.loss_fn(model, inputs, rng, state.step)
            return loss.astype(jnp.float32), (aux, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (aux, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        # Keep the dtypes of the stored state (bf16 activations may have updated BatchStats).
        model_state = jax.tree.map(
            lambda new, old: new.astype(old.dtype), model_state, state.model_state
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if after_update is not None:
            model = nnx.merge(graphdef, params, model_state)
            after_update(model, state.step)
            model_state = nnx.state(model, nnx.Not(nnx.Param))
        finite = jnp.isfinite(loss) & _all_finite(grads)

        def keep_if_finite(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = TrainState(
            params=keep_if_finite(params, state.params),
            model_state=keep_if_finite(model_state, state.model_state),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            step=state.step + 1,
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        )
        values = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        count = finite.astype(jnp.int32)
        averages = {
            k: metrics.Average(total=jnp.where(finite, jnp.mean(v), 0.0), count=count)
            for k, v in values.items()
        }
        averages["nonfinite"] = metrics.Average(
            total=(~finite).astype(jnp.float32), count=jnp.array(1, jnp.int32)
        )
        if learning_rate is not None:
            averages["learning_rate"] = metrics.Average(
                total=jnp.asarray(learning_rate(state.step), jnp.float32),
                count=jnp.array(1, jnp.int32),
            )
        return new_state, metrics.Collection.create_collection(**averages)

    return train_step


class Trainer:
    """Builds the state (fresh or restored) and the jitted step for a method and a config."""

    def __init__(self, config: ml_collections.ConfigDict, method: Method):
        self.config = config
        self.method = method
        self.mesh = sharding.make_mesh(config.mesh)
        self.host_batch_size = sharding.per_host_batch_size(config.batch_size, self.mesh)
        self.schedule = optimizers.make_schedule(config.optim, config.num_train_steps)
        self.tx = optimizers.make_optimizer(config.optim, config.num_train_steps)
        root = jax.random.key(config.seed)
        self.train_rng = jax.random.fold_in(root, TRAIN_STREAM)
        init_key = jax.random.fold_in(root, INIT_STREAM)

        abstract_model = nnx.eval_shape(lambda: method.build_model(config, nnx.Rngs(init_key)))
        self.graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)

        def init() -> TrainState:
            model = method.build_model(config, nnx.Rngs(init_key))
            _, params, model_state = nnx.split(model, nnx.Param, ...)
            zero = jnp.zeros((), jnp.int32)
            return TrainState(params, model_state, self.tx.init(params), zero, zero, zero)

        abstract = jax.eval_shape(init)
        self.state_shardings = jax.tree.map(lambda _: sharding.replicated(self.mesh), abstract)
        self.abstract_state = checkpointing.with_shardings(abstract, self.state_shardings)
        self.init_state = jax.jit(init, out_shardings=self.state_shardings)
        step_fn = make_train_step(
            self.graphdef,
            method,
            self.tx,
            mixed_precision=config.get("mixed_precision", False),
            learning_rate=self.schedule,
        )
        self.train_step = jax.jit(
            step_fn,
            donate_argnames="state",
            out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
        )

    def model(self, state: TrainState) -> nnx.Module:
        """The module holding `state`'s parameters and variables."""
        return nnx.merge(self.graphdef, state.params, state.model_state)


def davis_eval_fn(
    method: Any,
    sequences: Sequence[sequence_lib.VideoSequence],
    results_root: str | pathlib.Path,
    *,
    write_pngs: bool = False,
    num_overlays: int = 4,
) -> EvalFn:
    """An `eval_fn` scoring `method.make_segmenter(model)` with `evaluate.evaluate_sequences`.

    Args:
      method: has `make_segmenter(model) -> evaluate.Segmenter`.
      sequences: the validation videos (scored when every frame has a ground truth).
      results_root: masks of step s go to `results_root/step_<s>` when `write_pngs`.
      write_pngs: write the predicted masks.
      num_overlays: overlay images in the summaries.

    Returns:
      eval_fn(model, step) -> (J&F summary scalars, overlay images).
    """
    # Imported here: vosjax.evaluate's imports start the XLA backend, which must not happen
    # before `jax.distributed.initialize` in `train_and_evaluate`.
    from vosjax import evaluate
    from vosjax.metrics import report

    results_root = pathlib.Path(results_root)

    def eval_fn(model: nnx.Module, step: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        results_dir = results_root / f"step_{step}"
        results, overlays = evaluate.evaluate_sequences(
            method.make_segmenter(model),
            sequences,
            results_dir,
            write_pngs=write_pngs,
            num_overlays=num_overlays,
        )
        if results is not None and jax.process_index() == 0:
            report.write_all(results, results_dir)
            logging.info("Step %d\n%s", step, report.format_table(results))
        scalars = {k: v for k, v in (results or {}).items() if k != "per_object"}
        return scalars, overlays

    return eval_fn


def _flat_scalars(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number):
            out[f"{prefix}{key}"] = float(value)
    return out


def _evaluate(
    eval_fn: EvalFn,
    trainer: Trainer,
    state: TrainState,
    step: int,
    writer: metric_writers.MetricWriter,
) -> dict[str, float]:
    scalars, images = eval_fn(trainer.model(state), step)
    writer.write_scalars(step, _flat_scalars(scalars, "eval/"))
    if images:
        writer.write_images(
            step, {f"eval/overlay/{k}": np.asarray(v)[None] for k, v in images.items()}
        )
    writer.flush()
    return scalars


def flat_by_path(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a/b/c': leaf}; a trailing 'value' key (raw nnx Variables) is dropped."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_by_path(value, path))
        else:
            out[path.removesuffix("/value") if path.endswith("/value") else path] = value
    return out


def _fill_from(
    target: Any, source: Mapping[Any, Any], into: str, what: str, origin: str
) -> tuple[Any, int]:
    """`target` (an nnx.State) with the sub-tree at `into` taken from `source` (raw dicts)."""
    pure = nnx.to_pure_dict(target)
    sub = pure
    for key in [k for k in into.split("/") if k]:
        if key not in sub:
            raise ValueError(
                f"config.init_from.into={into!r}: the model has no sub-module {key!r} "
                f"({what}: {sorted(map(str, sub))})"
            )
        sub = sub[key]
    wanted = flat_by_path(sub)
    given = flat_by_path(source)
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise ValueError(
            f"config.init_from: {origin} has no {what} {missing[:5]} (of {len(missing)} "
            f"missing) for config.init_from.into={into!r}"
        )
    for path, value in wanted.items():
        if tuple(np.shape(given[path])) != tuple(np.shape(value)):
            raise ValueError(
                f"config.init_from: {what} {path} of {origin} has shape "
                f"{np.shape(given[path])}; the model expects {np.shape(value)}"
            )

    def fill(node: dict, prefix: str) -> dict:
        return {
            k: fill(v, f"{prefix}/{k}" if prefix else str(k))
            if isinstance(v, dict)
            else jnp.asarray(given[f"{prefix}/{k}" if prefix else str(k)], v.dtype)
            for k, v in node.items()
        }

    filled = fill(sub, "")
    if into.strip("/"):
        parent = pure
        *head, last = [k for k in into.split("/") if k]
        for key in head:
            parent = parent[key]
        parent[last] = filled
    else:
        pure = filled
    nnx.replace_by_pure_dict(target, pure)
    return target, len(wanted)


def init_from_checkpoint(
    config: ml_collections.ConfigDict, trainer: Trainer, state: TrainState
) -> TrainState:
    """`state` with `config.init_from`'s parameters and variables (fresh optimiser state).

    Raises:
      FileNotFoundError: `config.init_from.workdir` holds no such checkpoint.
      ValueError: a parameter is missing or has another shape (named).
    """
    init = config.init_from
    origin = pathlib.Path(init.workdir) / "checkpoints"
    with checkpointing.Checkpointer(origin, handle_sigterm=False) as other:
        raw, step = other.restore_raw(None if init.step < 0 else init.step)
    return state_with_weights(trainer, state, raw, init.into, f"{origin} step {step}")


def state_with_weights(
    trainer: Trainer, state: TrainState, raw: Mapping[str, Any], into: str, origin: str
) -> TrainState:
    """`state` with the sub-module `into` ('' = all) of `raw`'s weights, fresh optimiser state.

    Args:
      trainer: the Trainer of `state`.
      state: the state to fill.
      raw: {'params': ..., 'model_state': ...}, each nested dicts of host arrays (a checkpoint's
        `Checkpointer.restore_raw`) or flat {'a/b/c': array} (`flat_by_path`).
      into: the sub-module path.
      origin: where `raw` comes from, for errors and the log.

    Raises:
      ValueError: a parameter is missing or has another shape (named).
    """
    params, n_params = _fill_from(state.params, raw["params"], into, "param", origin)
    model_state, n_vars = _fill_from(
        state.model_state, raw["model_state"], into, "variable", origin
    )
    logging.info(
        "Initialised %s from %s: %d params, %d other variables",
        into or "the model",
        origin,
        n_params,
        n_vars,
    )
    state = state.replace(params=params, model_state=model_state, opt_state=trainer.tx.init(params))
    return jax.device_put(state, trainer.state_shardings)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    method: Method,
    data_iterator_factory: Callable[[int], Iterator[Any]] | None,
    eval_fn: EvalFn | None = None,
    *,
    rounds: DataRounds | None = None,
    trainer: Trainer | None = None,
) -> TrainState:
    """Trains `method` to `config.num_train_steps`, resuming from `workdir` if it holds a run.

    The run holds the workdir's lock (`vosjax.workdir_lock`) from start to end, and records its
    config in the workdir or checks it against the recorded one (`vosjax.run_record`) before
    restoring anything.

    Args:
      config: fields of `default_config()` plus the method's.
      workdir: checkpoints go to `workdir/checkpoints`, TensorBoard summaries to `workdir`.
      method: see `Method`.
      data_iterator_factory: per-host batch size -> an iterator of this host's batches (pytrees
        of numpy arrays [B_host, ...]) with `get_state()` / `set_state()`; it is restored to the
        checkpointed position on resume.
      eval_fn: if given, called every `config.eval_every_steps` and at the end. A finished
        evaluation leaves `workdir/evaluated/step_<s>`; a run stopped during one (after the
        step's checkpoint was saved) evaluates that checkpoint when it resumes.
      rounds: instead of `data_iterator_factory` (None then): training in rounds, each with
        the data `rounds.prepare` makes with the model at the round's first step. A resumed
        run prepares the round it is in (reusing what was cached) and restores the iterator's
        position; a run resumed exactly at a round's first step starts that round.
      trainer: the `Trainer(config, method)` when the caller has built it already.

    Returns:
      The final train state: at `num_train_steps`, or, when SIGTERM stopped the run after
      saving its checkpoint, at an earlier step (`preempted` tells).

    Raises:
      FloatingPointError: after `config.max_consecutive_nonfinite` skipped updates in a row;
        the checkpoints on disk are those of the last finite steps.
      workdir_lock.WorkdirLockedError: another run holds the workdir.
      run_record.RunMismatchError: the workdir holds a run of another method or state shapes.
    """
    validate_config(config)
    sharding.initialize_distributed(config)
    workdir = pathlib.Path(workdir)
    if (data_iterator_factory is None) == (rounds is None):
        raise ValueError("train_and_evaluate: give data_iterator_factory or rounds, not both")
    if rounds is not None and (not rounds.starts or rounds.starts[0] != 0):
        raise ValueError(f"rounds.starts={list(rounds.starts)}: expected 0 first")
    # The lock comes before anything touches the workdir (the checkpoint manager included).
    with workdir_lock.hold(workdir):
        trainer = trainer or Trainer(config, method)
        run_record.check(workdir, config, trainer.abstract_state, write=True)
        checkpointer = checkpointing.Checkpointer(
            workdir / "checkpoints",
            max_to_keep=config.keep_checkpoints,
            save_interval_steps=config.checkpoint_every_steps,
            async_writes=config.async_checkpoints,
        )
        writer = summaries.create_writer(workdir, just_logging=jax.process_index() > 0)
        try:
            return _loop(
                config,
                workdir,
                trainer,
                data_iterator_factory,
                rounds,
                checkpointer,
                writer,
                eval_fn,
            )
        finally:
            checkpointer.close()
            writer.flush()
            writer.close()


def preempted(config: ml_collections.ConfigDict, state: TrainState) -> bool:
    """Whether `train_and_evaluate` returned `state` because SIGTERM stopped the run (its
    checkpoint saved) before `config.num_train_steps`."""
    return int(np.asarray(state.step.addressable_data(0))) < int(config.num_train_steps)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    method: Method,
    eval_fn: EvalFn,
    step: int | None = None,
    *,
    summary_dir: str | pathlib.Path | None = None,
    trainer: Trainer | None = None,
) -> dict[str, float]:
    """Restores a checkpoint of `workdir` (the latest, or `step`) and evaluates it.

    The evaluation's summaries go to `summary_dir` (default: `workdir`, beside training's).
    The config is checked against the one recorded in `workdir` first (`vosjax.run_record`);
    the workdir's lock is the caller's choice (`vosjax.main` takes it when results go there).

    Args:
      trainer: the `Trainer(config, method)` when the caller has built it already.

    Returns:
      The evaluation scalars (J&F, ...), also written as summaries at that step.

    Raises:
      FileNotFoundError: `workdir` holds no checkpoint, or not the requested step.
      run_record.RunMismatchError: the workdir holds a run of another method or state shapes.
    """
    validate_config(config)
    sharding.initialize_distributed(config)
    workdir = pathlib.Path(workdir)
    trainer = trainer or Trainer(config, method)
    run_record.check(workdir, config, trainer.abstract_state, write=False)
    # A reader (it may run beside the training run): damaged steps are skipped, not moved.
    with checkpointing.Checkpointer(
        workdir / "checkpoints", handle_sigterm=False, move_damaged=False
    ) as checkpointer:
        steps = checkpointer.all_steps()
        if not steps or (step is not None and step not in steps):
            raise FileNotFoundError(
                f"{checkpointer.directory}: no checkpoint {'' if step is None else step} to "
                f"evaluate; saved steps: {sorted(steps)}"
            )
        state, step = checkpointer.restore(trainer.abstract_state, step)
    writer = summaries.create_writer(summary_dir or workdir, just_logging=jax.process_index() > 0)
    try:
        return _evaluate(eval_fn, trainer, state, step, writer)
    finally:
        writer.close()


def _evaluated_marker(workdir: pathlib.Path, step: int) -> pathlib.Path:
    """An empty file that says the evaluation of `step` finished."""
    return workdir / "evaluated" / f"step_{step}"


def _loop(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    trainer: Trainer,
    data_iterator_factory: Callable[[int], Iterator[Any]] | None,
    rounds: DataRounds | None,
    checkpointer: checkpointing.Checkpointer,
    writer: metric_writers.MetricWriter,
    eval_fn: EvalFn | None,
) -> TrainState:
    num_steps = int(config.num_train_steps)
    resumed = checkpointer.latest_step() is not None
    data_iterator = None
    if rounds is None:
        data_iterator = data_iterator_factory(trainer.host_batch_size)
    if resumed:
        state, step = checkpointer.restore(trainer.abstract_state, None, data_iterator)
    else:
        state, step = trainer.init_state(), 0
        if config.init_from.workdir:
            state = init_from_checkpoint(config, trainer, state)
        parameter_overview.log_parameter_overview(nnx.to_pure_dict(state.params))
    current_round = None
    if rounds is not None:
        current_round = round_start(rounds.starts, step)
        logging.info("Round starting at step %d (rounds start at %s)", current_round, rounds.starts)
        factory = rounds.prepare(trainer.model(state), current_round, step)
        data_iterator = factory(trainer.host_batch_size)
        if resumed and step != current_round:
            checkpointer.restore_data(step, data_iterator)
    logging.info("Training from step %d to %d", step, num_steps)
    hooks = summaries.training_hooks(config, workdir, num_steps, writer)
    max_nonfinite = int(config.get("max_consecutive_nonfinite", 0))
    eval_every = int(config.get("eval_every_steps", 0))
    evaluates = eval_fn is not None and eval_every >= 0

    def evaluate(state: TrainState, step: int) -> None:
        with hooks[0].timed("eval"):
            _evaluate(eval_fn, trainer, state, step, writer)
        if jax.process_index() == 0:
            marker = _evaluated_marker(workdir, step)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def is_eval_step(step: int) -> bool:
        return bool(eval_every and step % eval_every == 0) or step == num_steps

    # The checkpoint of an evaluation step is saved before the evaluation runs: a run stopped
    # during it (preemption, a kill) evaluates that checkpoint when it resumes.
    evaluated = _evaluated_marker(workdir, step).exists()
    if resumed and evaluates and is_eval_step(step) and not evaluated:
        logging.info("Step %d was not evaluated before the run stopped: evaluating it", step)
        evaluate(state, step)
    train_metrics = None
    skipped_total = 0  # corrupt videos the data pipeline skipped on this host since (re)start.
    while step < num_steps:
        if rounds is not None and step in rounds.starts and step != current_round:
            if train_metrics is not None:  # a round may log other metrics
                writer.write_scalars(step, _flat_scalars(train_metrics.compute(), "train/"))
                train_metrics = None
            current_round = step
            logging.info("Round starting at step %d", step)
            with hooks[0].timed("prepare_round"):
                factory = rounds.prepare(trainer.model(state), step, step)
            data_iterator = factory(trainer.host_batch_size)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            host_batch = next(data_iterator)
            if isinstance(host_batch, Mapping) and "skipped" in host_batch:
                skipped_total += int(np.sum(host_batch["skipped"]))
            batch = sharding.shard_batch(host_batch, trainer.mesh)
            state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
        step += 1
        train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
        for hook in hooks:
            hook(step)
        streak = int(jax.device_get(state.nonfinite_streak)) if max_nonfinite else 0
        if max_nonfinite and streak >= max_nonfinite:
            raise FloatingPointError(
                f"{streak} consecutive steps (up to step {step}) had a non-finite loss or "
                f"gradient (config.max_consecutive_nonfinite={max_nonfinite}); stopping. The "
                f"last good checkpoint is step {checkpointer.latest_step()} in "
                f"{checkpointer.directory}"
            )
        if step % config.log_every_steps == 0 or step == num_steps:
            summary = _flat_scalars(train_metrics.compute(), "train/")
            summary["train/nonfinite_total"] = int(jax.device_get(state.nonfinite_total))
            summary["train/skipped_corrupt_videos"] = skipped_total
            writer.write_scalars(step, summary)
            train_metrics = None
        preempted = checkpointer.preempted(step)
        # Never checkpoint inside a non-finite streak: the last checkpoint stays a good one.
        if (checkpointer.should_save(step) or step == num_steps or preempted) and streak == 0:
            checkpointer.save(step, state, data_iterator)
        if evaluates and is_eval_step(step):
            evaluate(state, step)
        if preempted:
            logging.warning("Preempted: checkpoint of step %d saved, exiting", step)
            break
    return state
