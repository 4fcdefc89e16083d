"""INO's released checkpoints (and DINO's backbones) -> `vosjax.methods.ino.model.INOModel`.

A released INO checkpoint is `{'student': ..., 'teacher': ..., 'optimizer': ..., 'args': ...}`;
each network is a MultiCropWrapper: `backbone.*` (the ViT, `vosjax.weights.vit.load_vit`) and
`headlist.headlist.0.*` (the single DINOHead of the final version, `load_dino_head`), the student
with a DataParallel `module.` prefix that the caller strips. The released inference
(`infer_vos.py`) loads `--checkpoint_key student` by default (backbone only, `module.` and
`backbone.` stripped, the head ignored); the teacher is the other choice.

`import_released` is given ONE of those state_dicts and fills both networks of INOModel with it:
student and teacher (ViT and head) get the same weights, as DINO / INO initialise the teacher as a
copy of the student. `--mode=eval` then evaluates the imported network whichever of
`config.eval.features` ('student' / 'teacher') is set, and training continued from it starts, like
the released training, from teacher == student. The centres are not part of a network's
state_dict (the released checkpoint keeps them in `dino_loss_cls_list` / `dino_loss_hw_list`):
this function leaves them as they are; `vosjax.import_weights` sets them from those entries.

Also accepted: DINO's released backbone files (`cls_token`, `pos_embed`, `blocks.0...`, no prefix
and no mask token): the ViTs are filled, the heads and the mask token keep their initialisation.
DINO's full training checkpoints (`backbone.*` and `head.*`) load the head from `head.*`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from vosjax.methods.ino import head as head_lib
from vosjax.methods.ino import model as model_lib
from vosjax.weights import layout, vit

INO_BACKBONE = "backbone."
INO_HEAD = "headlist.headlist.0."
DINO_HEAD = "head."


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> tuple[str, str | None]:
    """(backbone prefix, head prefix or None) of a released state_dict.

    Raises:
      layout.WeightImportError: no ViT found (names the first few tensors seen).
    """
    names = list(state_dict)
    if f"{INO_BACKBONE}cls_token" in state_dict:
        if any(n.startswith(INO_HEAD) for n in names):
            return INO_BACKBONE, INO_HEAD
        if any(n.startswith(DINO_HEAD) for n in names):
            return INO_BACKBONE, DINO_HEAD
        return INO_BACKBONE, None
    if "cls_token" in state_dict:
        return "", None
    module = [n for n in names if n.startswith("module.")]
    hint = " (strip the DataParallel 'module.' prefix first)" if module else ""
    raise layout.WeightImportError(
        "state_dict: neither an INO/DINO MultiCropWrapper ('backbone.cls_token') nor a plain ViT "
        f"('cls_token'){hint}; first tensors: {names[:5]}"
    )


def _load_network(
    reader: layout.StateDictReader,
    backbone: nnx.Module,
    head: nnx.Module,
    backbone_prefix: str,
    head_prefix: str | None,
) -> None:
    vit.load_vit(reader, backbone_prefix, backbone, strict_grid=True)
    if head_prefix is not None:
        vit.load_dino_head(reader, head_prefix, head)


def _as_teacher_values(source: nnx.Module, target: nnx.Module) -> None:
    """Copies the weights of `source` into the same paths of `target` (Param -> Teacher)."""
    values = nnx.to_pure_dict(nnx.state(source, nnx.Any(nnx.Param, head_lib.FixedScale)))
    state = nnx.state(target, nnx.Any(model_lib.Teacher, head_lib.FixedScale))
    nnx.replace_by_pure_dict(state, values)
    nnx.update(target, state)


def import_released(
    model: model_lib.INOModel,
    state_dict: Mapping[str, np.ndarray],
    source: str = "state_dict",
) -> None:
    """Fills `model` (student and teacher) in place from one released network's state_dict.

    Args:
      model: what `INO.build_model(config, rngs)` returns. Its position-embedding grid must be
        the checkpoint's (INO: config.model.pos_embed_size=64; DINO's backbones: 224), so that
        the written checkpoint restores into the model the same config builds.
      state_dict: INO's `student` or `teacher` (or a DINO backbone / full checkpoint network)
        with any `module.` prefix stripped; torch name -> numpy array.
      source: the file it came from, for error messages.

    Raises:
      layout.WeightImportError: a tensor is missing, unexpected or misshaped (named, with both
        shapes), or the layout is not recognised.
    """
    backbone_prefix, head_prefix = detect_layout(state_dict)
    reader = layout.StateDictReader(state_dict, source)
    _load_network(reader, model.student, model.student_head, backbone_prefix, head_prefix)
    reader.finish()
    _as_teacher_values(model.student, model.teacher)
    _as_teacher_values(model.student_head, model.teacher_head)
