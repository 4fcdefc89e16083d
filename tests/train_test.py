"""End-to-end tests of the train loop with the toy method on 8 fake CPU devices."""

import re
import signal
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import toy_method, toy_train
from vosjax import checkpointing, sharding, train


def _host_batch(step, config):
    iterator = iter(toy_method.dataset(config.batch_size))
    for _ in range(step):
        next(iterator)
    return next(iterator)


def test_sharded_train_step_matches_single_device_reference():
    config = toy_method.config()
    method = toy_method.ToyMethod()
    trainer = train.Trainer(config, method)
    state = trainer.init_state()
    assert state.params["conv2"]["kernel"][...].sharding == sharding.replicated(trainer.mesh)
    host = _host_batch(0, config)
    batch = sharding.shard_batch(host, trainer.mesh)
    assert batch["image"].shape == (16, 8, 8, 3)
    assert len(batch["image"].sharding.device_set) == 8
    assert {s.data.shape for s in batch["image"].addressable_shards} == {(2, 8, 8, 3)}

    # Reference: the same step, un-jitted, on one device, from a copy of the initial state.
    device = jax.devices()[0]
    ref_state = jax.device_put(jax.tree.map(np.asarray, state), device)
    step_fn = jax.jit(train.make_train_step(trainer.graphdef, method, trainer.tx))
    ref_new, ref_metrics = step_fn(ref_state, jax.device_put(host, device), trainer.train_rng)
    expected_loss, _ = method.loss_fn(
        trainer.model(ref_state),
        jax.device_put(host, device),
        jax.random.fold_in(trainer.train_rng, 0),
        jnp.array(0),
    )

    new_state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
    assert int(new_state.step) == 1 and int(new_state.nonfinite_total) == 0
    assert new_state.params["conv2"]["kernel"][...].shape == (3, 3, 8, 1)
    assert new_state.params["conv2"]["kernel"][...].sharding == sharding.replicated(trainer.mesh)
    computed = step_metrics.compute()
    np.testing.assert_allclose(computed["loss"], float(ref_metrics.compute()["loss"]), rtol=1e-5)
    np.testing.assert_allclose(computed["loss"], float(expected_loss), rtol=1e-5)
    for new, ref in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_new), strict=True):
        np.testing.assert_allclose(np.asarray(new), np.asarray(ref), rtol=1e-5, atol=1e-6)
    # The update moved the parameters and the BatchNorm statistics and the EMA teacher.
    init = trainer.init_state()
    assert not np.allclose(
        new_state.params["conv2"]["kernel"][...], init.params["conv2"]["kernel"][...]
    )
    assert not np.allclose(new_state.model_state["norm"]["mean"][...], 0.0)
    assert not np.allclose(new_state.model_state["teacher"][...], init.model_state["teacher"][...])


def test_bad_configs_name_the_field(tmp_path):
    config = toy_method.config()
    config.batch_size = None
    with pytest.raises(ValueError, match="config.batch_size is required"):
        train.validate_config(config)
    config = toy_method.config()
    config.batch_size = 12
    with pytest.raises(ValueError, match="config.batch_size=12"):
        train.Trainer(config, toy_method.ToyMethod())


def _run(workdir, num_steps, nan_steps=(), eval_fn=None, **overrides):
    config = toy_method.config(num_steps)
    config.update(overrides)

    def factory(host_batch_size):
        del host_batch_size
        return toy_method.ControlledIterator(iter(toy_method.dataset(config.batch_size)))

    return train.train_and_evaluate(
        config, workdir, toy_method.ToyMethod(nan_steps), factory, eval_fn
    )


class _Interrupted(Exception):
    pass


def test_a_run_stopped_during_evaluation_evaluates_on_resume(tmp_path):
    calls = []

    def eval_fn(model, step, fail_at=None):
        calls.append((step, float(jnp.sum(model.conv2.kernel[...]))))
        if step == fail_at:
            raise _Interrupted
        return {"score": float(step)}, {}

    # Evaluations at 2 and 4 (the end); the one at 4 is cut short after its checkpoint.
    with pytest.raises(_Interrupted):
        _run(tmp_path, 4, eval_fn=lambda m, s: eval_fn(m, s, fail_at=4), eval_every_steps=2)
    assert [s for s, _ in calls] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "evaluated").iterdir()) == ["step_2"]
    interrupted_params = calls[-1][1]
    calls.clear()
    _run(tmp_path, 4, eval_fn=eval_fn, eval_every_steps=2)
    # Only step 4 again, with the checkpointed parameters; no training step ran.
    assert calls == [(4, interrupted_params)]
    calls.clear()
    _run(tmp_path, 4, eval_fn=eval_fn, eval_every_steps=2)
    assert calls == []


def test_nonfinite_loss_skips_the_update(tmp_path):
    skipped = _run(tmp_path / "a", 3, nan_steps=(2,))
    clean = _run(tmp_path / "b", 2)
    assert int(skipped.nonfinite_total) == 1 and int(skipped.nonfinite_streak) == 1
    assert int(skipped.step) == 3
    # Step 2 changed nothing: params, BatchNorm stats, teacher and Adam state are those of step 2.
    for a, b in zip(
        jax.tree.leaves((skipped.params, skipped.model_state, skipped.opt_state)),
        jax.tree.leaves((clean.params, clean.model_state, clean.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stops_after_n_nonfinite_in_a_row(tmp_path):
    with pytest.raises(FloatingPointError, match="config.max_consecutive_nonfinite=3"):
        _run(
            tmp_path, 10, nan_steps=(3, 4, 5), max_consecutive_nonfinite=3, checkpoint_every_steps=1
        )
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", handle_sigterm=False)
    assert ckpt.latest_step() == 3  # the last step with a finite update
    trainer = train.Trainer(toy_method.config(10), toy_method.ToyMethod())
    restored, _ = ckpt.restore(trainer.abstract_state)
    ckpt.close()
    clean = _run(tmp_path / "clean", 3)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(clean.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(trainer.model(restored), nnx.Module)


class _DtypeRecorder(toy_method.ToyMethod):
    """Records the dtypes that loss_fn sees (at trace time); keeps 'target' in fp32."""

    fp32_inputs = ("target",)

    def __init__(self):
        super().__init__()
        self.seen = {}

    def loss_fn(self, model, batch, rng, step):
        self.seen = {
            "image": batch["image"].dtype,
            "target": batch["target"].dtype,
            "kernel": model.conv1.kernel[...].dtype,
        }
        return super().loss_fn(model, batch, rng, step)


def test_mixed_precision_step_bf16_compute_fp32_master_weights():
    config = toy_method.config()
    host = _host_batch(0, config)
    results = {}
    for mixed in (False, True):
        config.mixed_precision = mixed
        method = _DtypeRecorder()
        trainer = train.Trainer(config, method)
        state = trainer.init_state()
        batch = sharding.shard_batch(host, trainer.mesh)
        new_state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
        results[mixed] = (method.seen, new_state, float(step_metrics.compute()["loss"]))
    seen, state16, loss16 = results[True]
    assert seen == {"image": jnp.bfloat16, "target": jnp.float32, "kernel": jnp.bfloat16}
    assert results[False][0] == {"image": jnp.float32, "target": jnp.float32, "kernel": jnp.float32}
    # Master weights, optimiser state and BatchNorm statistics stay fp32.
    for leaf in jax.tree.leaves((state16.params, state16.opt_state, state16.model_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    _, state32, loss32 = results[False]
    # bf16 compute: the loss differs from fp32 by bf16 rounding (~3 significant digits), not more.
    assert loss16 != loss32
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    # Adam's first step moves each weight by about lr * sign(grad): the same for almost all.
    a = np.asarray(state16.params["conv1"]["kernel"][...])
    b = np.asarray(state32.params["conv1"]["kernel"][...])
    assert np.mean(np.abs(a - b) < 1e-3) > 0.9


def test_profile_writes_a_trace(tmp_path):
    profile = {"enabled": True, "first_step": 1, "num_steps": 2, "every_steps": 0}
    _run(tmp_path, 5, profile=profile)
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


# Subprocess tests: each process imports JAX and TensorFlow (clu writers), ~20 s each here.


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 8-step run in one process with 8 devices."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = toy_train.launch(workdir, "--steps=8")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return toy_train.read_params(workdir / "params_0.npz")


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path, reference_run):
    killed = toy_train.launch(tmp_path, "--steps=8", "--kill_at=5")
    out, _ = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, out
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", handle_sigterm=False)
    saved = ckpt.latest_step()
    ckpt.close()
    assert saved in (2, 4)  # the step-4 write may not have finished before the kill
    resumed = toy_train.launch(tmp_path, "--steps=8")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    # The resumed run asked for the batches after the checkpoint, not from 0.
    assert re.findall(r"batch (\d+)", out) == [str(i) for i in range(saved, 8)], out
    assert "done at step 8" in out
    for a, b in zip(toy_train.read_params(tmp_path / "params_0.npz"), reference_run, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = toy_train.launch(tmp_path, "--steps=500", "--sleep=0.2")
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("batch 3"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    final = int(re.search(r"done at step (\d+)", out).group(1))
    assert 3 <= final < 500
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", handle_sigterm=False)
    assert ckpt.latest_step() == final  # saved at the step where the signal was seen
    ckpt.close()


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, reference_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        toy_train.launch(
            tmp_path,
            "--steps=8",
            "--devices=4",
            "--num_processes=2",
            f"--process_id={i}",
            f"--port={port}",
        )
        for i in range(2)
    ]
    deadline = time.time() + 400
    outs = [p.communicate(timeout=max(deadline - time.time(), 1))[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for i in range(2):
        params = toy_train.read_params(tmp_path / f"params_{i}.npz")
        for a, b in zip(params, reference_run, strict=True):
            # Cross-process reductions may sum in another order: equal up to float rounding.
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


class _Wrapped(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.inner = toy_method.ToyNet(rngs)
        self.extra = nnx.Linear(2, 3, rngs=rngs)


class _WrappedMethod(toy_method.ToyMethod):
    def build_model(self, config, rngs):
        del config
        return _Wrapped(rngs)


def test_init_from_another_run_fills_one_submodule(tmp_path):
    source = _run(tmp_path / "source", 2, checkpoint_every_steps=1, async_checkpoints=False)
    config = toy_method.config(2)
    config.seed = 7  # another initialisation, so that copied values are recognisable
    config.init_from.update({"workdir": str(tmp_path / "source"), "step": 2, "into": "inner"})
    trainer = train.Trainer(config, _WrappedMethod())
    fresh = trainer.init_state()
    fresh_extra = np.asarray(fresh.params["extra"]["kernel"][...])
    fresh_inner = np.asarray(fresh.params["inner"]["conv1"]["kernel"][...])
    state = train.init_from_checkpoint(config, trainer, fresh)
    np.testing.assert_array_equal(
        np.asarray(state.params["inner"]["conv1"]["kernel"][...]),
        np.asarray(source.params["conv1"]["kernel"][...]),
    )
    assert not np.array_equal(fresh_inner, np.asarray(source.params["conv1"]["kernel"][...]))
    # BatchNorm statistics and the EMA teacher (not Params) come along.
    np.testing.assert_array_equal(
        np.asarray(state.model_state["inner"]["norm"]["mean"][...]),
        np.asarray(source.model_state["norm"]["mean"][...]),
    )
    np.testing.assert_array_equal(
        np.asarray(state.model_state["inner"]["teacher"][...]),
        np.asarray(source.model_state["teacher"][...]),
    )
    np.testing.assert_array_equal(np.asarray(state.params["extra"]["kernel"][...]), fresh_extra)

    config.init_from.into = "missing"
    with pytest.raises(ValueError, match="config.init_from.into='missing'"):
        train.init_from_checkpoint(config, trainer, trainer.init_state())
    config.init_from.into = ""  # the whole wrapped model: the source has no 'extra'
    with pytest.raises(ValueError, match="has no param"):
        train.init_from_checkpoint(config, trainer, trainer.init_state())
