"""Imports the authors' released weights into a vosjax checkpoint that `vosjax.main` evaluates.

python -m vosjax.import_weights --config=CONFIG --pytorch=FILE --workdir=W [--checkpoint_key=KEY]
python -m vosjax.main --config=CONFIG --workdir=W --mode=eval

For each method (add --config.eval.davis_root=/data/DAVIS --config.eval.imageset=2017/val to
evaluate where the paper does):
  INO (main_VOS.py's checkpoint.pth):  CONFIG=configs/ino/vits8_davis2016.py, KEY 'student'
      (the default, as the released infer_vos.py) or 'teacher'; DINO's ViT-S/8 backbone files
      load too with --config.model.pos_embed_size=224 (heads and mask token keep their
      initialisation).
  SHLS (utils_LT.save_model's *_best.pth / *_last.pth):  CONFIG=configs/shls/msra10k.py.
  Mask-VOS (utils/checkpoints.py's epoch*_score*.pth of the mask stage):
      CONFIG=configs/maskvos/r50.py.

FILE is a `.pth`/`.pt` checkpoint (read without PyTorch, `vosjax.weights.torch_file`; the legacy
format of torch < 1.6 needs `pip install -e .[torch]`) or a `.npz` state_dict. The released
model's state_dict is taken from it as `vosjax.weights.checkpoint_files` describes (INO's
'student' by default, or `--checkpoint_key`; Mask-VOS's and SHLS's 'model'; DINO's plain
backbone files as they are), converted by the method's converter (`vosjax.weights.<method>
.import_released`: ino, maskvos, shls) into the model that the config builds, and saved as step 0
of W/checkpoints with a fresh optimiser state, beside W/imported_from.json (file, key, tensor
count) and the config record that `--mode=eval` checks (W/config.json, W/run_info.json). W is
locked while the import writes it (`vosjax.workdir_lock`). INO's teacher centres come from the
released losses' state when the file has it. The config decides the model, so it must describe
the checkpoint's network (INO: config.model.pos_embed_size=64 as released); a mismatch is an
error naming the tensor.

Training from the imported weights: a new run with `--config.init_from.workdir=W` (its own
workdir, step 0, a fresh optimiser and data iterator). Training in W itself is not supported: a
run there resumes step 0 and expects a saved data-iterator position, which an import has not.

`--config` and `--workdir` are `vosjax.main`'s flags (this command builds the method as main does).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from vosjax import checkpointing, run_record, train, workdir_lock
from vosjax import main as main_lib
from vosjax.weights import checkpoint_files, layout

_PYTORCH = flags.DEFINE_string(
    "pytorch", None, "The released checkpoint: a .pth/.pt file (torch.save) or a .npz state_dict."
)
_CHECKPOINT_KEY = flags.DEFINE_string(
    "checkpoint_key",
    None,
    "The file's top-level key holding the model's state_dict (INO: 'student' (default) or "
    "'teacher'); default: the method's usual key, or the whole file for a plain state_dict.",
)

IMPORT_STEP = 0
RECORD = "imported_from.json"
# INO's teacher centres: the state of the released losses (one per output scale; vosjax has one).
INO_CENTRES = {
    "center_cls": "dino_loss_cls_list.0.center",
    "center_patch": "dino_loss_hw_list.0.center",
}
Converter = Callable[[nnx.Module, Mapping[str, np.ndarray], str], None]


def converter(method: str) -> Converter:
    """The converter `import_released(model, state_dict, source)` of `config.method`.

    Raises:
      ValueError: the method has no released checkpoints to import (naming those that have).
    """
    if method == "ino":
        from vosjax.weights import ino

        return ino.import_released
    if method == "maskvos":
        from vosjax.weights import maskvos

        return maskvos.import_released
    if method == "shls":
        from vosjax.weights import shls

        return shls.import_released
    raise ValueError(
        f"config.method={method!r}: no released checkpoint to import; the authors released "
        f"those of {IMPORTABLE} (Mask-VOS's is its mask stage: configs/maskvos/r50.py)"
    )


IMPORTABLE = ("ino", "maskvos", "shls")


@dataclasses.dataclass(frozen=True)
class Imported:
    """What `import_checkpoint` did.

    Attributes:
      released: the state_dict read from the file (and where it came from).
      directory: the checkpoints folder written.
      step: the step saved.
      num_params: number of parameter values of the model.
      loss_state: the file's loss tensors imported too (INO's centres).
    """

    released: checkpoint_files.Released
    directory: pathlib.Path
    step: int
    num_params: int
    loss_state: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        r = self.released
        info = {k: v for k, v in r.info.items() if k != "args"}
        args = r.info.get("args", {})
        args = {k: args[k] for k in ("arch", "patch_size", "out_dim") if k in args}
        lines = [
            f"Imported {len(r.state_dict)} tensors of {r.source}"
            + (f" ({r.stripped} without their 'module.' prefix)" if r.stripped else ""),
            f"  saved as step {self.step} of {self.directory} ({self.num_params:,} parameters)",
        ]
        if self.loss_state:
            lines.append(f"  and the losses' state: {', '.join(self.loss_state)}")
        if info or args:
            lines.append(f"  the file also says: {info | ({'args': args} if args else {})}")
        return "\n".join(lines)


def import_ino_centres(model: nnx.Module, released: checkpoint_files.Released) -> list[str]:
    """INO's teacher centres from the released losses' state, when the file has them.

    The released training restores them with the networks when it resumes
    (`dino_loss_cls_list`, `dino_loss_hw_list`); vosjax keeps them as model state, so a run
    started from the imported checkpoint (`config.init_from`) continues with them too. A file
    with several centres per loss (INO's `--multi_scale_layer` with several blocks) or none
    leaves the centres at zero.

    Returns:
      The names of the tensors imported.
    """
    loss = released.loss_state
    if not all(name in loss for name in INO_CENTRES.values()):
        return []
    if any(n.startswith(("dino_loss_cls_list.1.", "dino_loss_hw_list.1.")) for n in loss):
        print(f"{released.source}: several centres per loss (multi-scale); centres left at zero")
        return []
    for attribute, name in INO_CENTRES.items():
        layout.assign(getattr(model, attribute), np.asarray(loss[name]).reshape(-1), name)
    return list(INO_CENTRES.values())


def _existing_steps(directory: pathlib.Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def import_checkpoint(
    config: ml_collections.ConfigDict,
    pytorch: str | pathlib.Path,
    workdir: str | pathlib.Path,
    checkpoint_key: str | None = None,
) -> Imported:
    """Converts a released checkpoint and saves it as step 0 of `workdir`/checkpoints.

    Args:
      config: the method's config (its model must be the checkpoint's network).
      pytorch: the checkpoint file (.pth/.pt/.npz).
      workdir: where the checkpoint goes; must hold no checkpoint yet.
      checkpoint_key: the file's key holding the state_dict (None: the method's default).

    Returns:
      What was imported.

    Raises:
      FileExistsError: `workdir` already holds checkpoints (its steps are named).
      FileNotFoundError: no such file.
      ValueError: the file, the key or a tensor does not fit (named); the method has no
        converter.
    """
    train.validate_config(config)
    # The lock first: nothing touches the workdir while another run owns it.
    with workdir_lock.hold(workdir):
        return _import_locked(config, pytorch, pathlib.Path(workdir), checkpoint_key)


def _import_locked(
    config: ml_collections.ConfigDict,
    pytorch: str | pathlib.Path,
    workdir: pathlib.Path,
    checkpoint_key: str | None,
) -> Imported:
    directory = workdir / "checkpoints"
    steps = _existing_steps(directory)
    if steps:
        raise FileExistsError(
            f"{directory} already holds checkpoints (steps {steps}): importing would mix them "
            "with another run's; choose an empty --workdir"
        )
    convert = converter(config.method)  # before reading: fail fast on a method without one
    released = checkpoint_files.read_released(pytorch, config.method, checkpoint_key)
    method = main_lib.build_method(config)
    trainer = train.Trainer(config, method)
    state = trainer.init_state()
    model = trainer.model(state)
    convert(model, released.state_dict, released.source)
    centres = import_ino_centres(model, released) if config.method == "ino" else []
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    raw = {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(model_state)}
    # Checked against the trainer's state (names, shapes, dtypes) with a fresh optimiser state:
    # exactly what `--mode=eval` restores and `config.init_from` reads.
    state = train.state_with_weights(trainer, state, raw, "", released.source)
    # Recorded like a training run's workdir: `--mode=eval` checks its config against it.
    run_record.check(workdir, config, trainer.abstract_state, write=True)
    with checkpointing.Checkpointer(
        directory, async_writes=False, handle_sigterm=False
    ) as checkpointer:
        checkpointer.save(IMPORT_STEP, state)
    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(raw["params"]))
    imported = Imported(released, directory.absolute(), IMPORT_STEP, num_params, centres)
    if jax.process_index() == 0:
        record = {
            "file": str(pathlib.Path(pytorch).absolute()),
            "key": released.key,
            "tensors": len(released.state_dict),
            "module_prefix_stripped": released.stripped,
            "method": config.method,
            "step": IMPORT_STEP,
            "parameters": num_params,
            "loss_state": centres,
            "file_info": released.info,
        }
        (workdir / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return imported


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    flag_values: Any = flags.FLAGS
    config, workdir = flag_values.config, flag_values.workdir
    imported = import_checkpoint(config, _PYTORCH.value, workdir, _CHECKPOINT_KEY.value)
    print(imported.summary())
    config_file = config_flags.get_config_filename(flag_values["config"])
    print(
        f"Evaluate: python -m vosjax.main --config={config_file} --workdir={workdir} --mode=eval"
        f"\nTrain from it: python -m vosjax.main --config={config_file} --workdir=NEW_WORKDIR "
        f"--config.init_from.workdir={workdir}\n(with the same --config.* overrides, if any)"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir", "pytorch"])
    app.run(main)
