"""A released checkpoint file -> the state_dict of the released model that a method converts.

The authors' trainers wrap the model's state_dict in a dict of their own:

- INO (main_VOS.py): `{'student', 'teacher', 'optimizer', 'epoch', 'args' (argparse.Namespace),
  'dino_loss_cls_list', 'dino_loss_hw_list'[, 'fp16_scaler']}`; the student is DataParallel's
  (`module.backbone.*`, `module.headlist.headlist.0.*`), the teacher is not (no `module.`). The
  released inference reads `--checkpoint_key student` by default; DINO's full checkpoints have
  the same keys.
- DINO's released backbones: the plain ViT state_dict (`cls_token`, `blocks.0...`).
- Mask-VOS (utils/checkpoints.py): `{'model', 'opt', 'score', 'epoch'}`.
- SHLS (utils_LT.save_model): `{'model', 'optimizer', 'epoch', 'top_iou', 'global_ite',
  'test_ite'}` of a DistributedDataParallel model (`module.` prefixes).

`select` picks the state_dict (`--checkpoint_key`, else the method's default key, else the
file itself when it is a plain state_dict) and strips the DataParallel `module.` prefixes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vosjax.weights import torch_file

# The key holding the model's state_dict in each method's released checkpoints, default first.
METHOD_KEYS = {
    "ino": ("student", "teacher"),
    "maskvos": ("model",),
    "maskvos_correspondence": ("model",),
    "shls": ("model",),
}
# Keys other trainers commonly use for the model (tried after the method's own).
GENERIC_KEYS = ("state_dict", "model", "model_state_dict", "net")
DATA_PARALLEL_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class Released:
    """The state_dict of a released model, read from a checkpoint file.

    Attributes:
      state_dict: tensor name (without `module.`) -> numpy array, in the file's order.
      source: where it came from, e.g. "ckpt.pth['student']" (for messages).
      key: the top-level key it was taken from; None for a plain state_dict file.
      stripped: how many names lost a `module.` prefix.
      info: the file's other top-level entries that are numbers or strings (epoch, score, ...)
        and, under 'args', the saved argparse.Namespace as a dict.
      loss_state: the tensors of the file's loss modules ('<key>.<name>' of every other
        top-level state_dict whose key names a loss, e.g. INO's
        'dino_loss_cls_list.0.center'): training state that is not the network's.
    """

    state_dict: dict[str, np.ndarray]
    source: str
    key: str | None
    stripped: int
    info: dict[str, Any]
    loss_state: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of string names to arrays."""
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())
    )


def strip_data_parallel(
    state_dict: Mapping[str, np.ndarray], source: str = "state_dict"
) -> tuple[dict[str, np.ndarray], int]:
    """The state_dict with leading `module.` prefixes removed (nested wrappers: all of them).

    Returns:
      (state_dict, number of names changed).

    Raises:
      ValueError: two names become the same (naming both).
    """
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    stripped = 0
    for name, value in state_dict.items():
        short = name
        while short.startswith(DATA_PARALLEL_PREFIX):
            short = short[len(DATA_PARALLEL_PREFIX) :]
        if short in out:
            raise ValueError(
                f"{source}: tensors {origin[short]!r} and {name!r} are both {short!r} once the "
                f"DataParallel prefix {DATA_PARALLEL_PREFIX!r} is removed"
            )
        stripped += short != name
        out[short], origin[short] = value, name
    return out, stripped


def _describe_keys(contents: Mapping[str, Any]) -> str:
    return ", ".join(f"{k!r} ({_kind(v)})" for k, v in contents.items())


def _kind(value: Any) -> str:
    if is_state_dict(value):
        return f"{len(value)} tensors"
    if isinstance(value, np.ndarray):
        return f"array {value.shape}"
    return type(value).__name__


def _info(contents: Mapping[str, Any]) -> dict[str, Any]:
    info = {}
    for key, value in contents.items():
        if isinstance(value, (int, float, str, np.number)) and not isinstance(value, bool):
            info[str(key)] = value.item() if isinstance(value, np.number) else value
        elif isinstance(value, argparse.Namespace):
            info[str(key)] = dict(vars(value))
    return info


def select(
    contents: Any, method: str, checkpoint_key: str | None = None, source: str = "checkpoint"
) -> Released:
    """The released model's state_dict inside a checkpoint's contents (see the module docstring).

    Args:
      contents: what `torch_file.read` returned.
      method: `config.method` (picks the default key: INO 'student', Mask-VOS and SHLS 'model').
      checkpoint_key: the top-level key to take (e.g. 'teacher'); None: the method's default,
        or the whole file when it is a plain state_dict.
      source: the file name, for messages.

    Raises:
      ValueError: the file is not a dict, `checkpoint_key` is absent (the keys present are
        listed), no key holds a state_dict, or the chosen entry holds something other than
        tensors (named).
    """
    if not isinstance(contents, Mapping):
        raise ValueError(f"{source}: holds a {type(contents).__name__}, expected a dict")
    plain = is_state_dict(contents)
    if checkpoint_key:
        if plain:
            raise ValueError(
                f"{source}: --checkpoint_key={checkpoint_key!r}, but the file is a plain "
                f"state_dict of {len(contents)} tensors (first: {list(contents)[:3]}) with no "
                "keys to choose from: leave out --checkpoint_key"
            )
        if checkpoint_key not in contents:
            raise ValueError(
                f"{source}: no key {checkpoint_key!r} (--checkpoint_key); the file holds "
                f"{_describe_keys(contents)}"
            )
        key = checkpoint_key
    elif plain:
        key = None
    else:
        candidates = METHOD_KEYS.get(method, ()) + GENERIC_KEYS
        key = next((k for k in candidates if is_state_dict(contents.get(k))), None)
        if key is None:
            raise ValueError(
                f"{source}: no state_dict under the keys a {method} checkpoint uses "
                f"({', '.join(map(repr, dict.fromkeys(candidates)))}); the file holds "
                f"{_describe_keys(contents)}: choose one with --checkpoint_key"
            )
    chosen = contents if key is None else contents[key]
    where = source if key is None else f"{source}[{key!r}]"
    if not isinstance(chosen, Mapping) or not chosen:
        raise ValueError(f"{where}: holds {_kind(chosen)}, expected a state_dict of tensors")
    for name, value in chosen.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"{where}: entry {name!r} is a {type(value).__name__}, not a tensor: this key "
                "does not hold a model's state_dict"
            )
    state_dict, stripped = strip_data_parallel(chosen, where)
    loss_state = {}
    if not plain:
        for name, value in contents.items():
            if name != key and "loss" in str(name) and is_state_dict(value):
                loss_state.update({f"{name}.{k}": v for k, v in value.items()})
    info = {} if plain else _info(contents)
    return Released(state_dict, where, key, stripped, info, loss_state)


def read_released(
    path: str | os.PathLike, method: str, checkpoint_key: str | None = None
) -> Released:
    """`select` on the contents of a `.pth`/`.pt`/`.npz` file (`torch_file.read`)."""
    return select(torch_file.read(path), method, checkpoint_key, str(path))
