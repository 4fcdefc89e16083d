"""INO, In-N-Out generative learning (Pan et al., ACM MM 2022), as a vosjax training method.

Per clip of L frames (one global crop G x G and M local crops of every frame, `INOCrops`):
- out-generative: class tokens of the frame pairs (n, n + L/2): the teacher's two global crops
  against the student's other global crop (g2g) and every local crop of the pair (l2g);
- in-generative MIM: with probability 0.5 a mask over U(0.1, 0.5) of the student's patches
  (uniformly random patches as the released generator, or block-wise: `config.mim.style`; one
  mask per clip, shared by its frames; the released code shares one mask over the whole batch:
  `config.mim.shared_mask`), mask token in, cross entropy against the unmasked teacher's patch
  outputs on the masked positions;
- in-generative affinity: teacher vs student affinity of the masked tokens between consecutive
  frames (tau_t 0.04, tau_s 0.1);
loss = out_weight (g2g + l2g) + mim_weight MIM + affinity_weight affinity (1 : 1 : 1). The teacher
is the EMA of the student (cosine momentum 0.996 -> 1, `after_update`), the teacher's outputs
are centred (momentum 0.9; means over the global batch, which under jit is the all-reduce). As in
the released main_VOS (`config.loss.center_update='per_call'`), the class centre moves after each
frame pair's loss and the patch centre after each frame's MIM term (from the masked tokens), so
later pairs / frames of the same step are centred with the updated centre.

Batch (`INOCrops` through the grain pipeline, B clips):
  'global'  uint8 [B, L, G, G, 3]      one global crop per frame;
  'local'   uint8 [B, L, M, S, S, 3]   M local crops per frame;
  'frame_indices', 'video_index', 'skipped' as every `ClipLoader` example.

Evaluation: patch tokens of an intermediate block (7 of 12) of the student or the teacher,
L2-normalised, propagated with the foundation's `ino` preset (`INOFeatures`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vosjax import evaluate
from vosjax.data import transforms_multicrop
from vosjax.methods.ino import losses, mask_generator
from vosjax.methods.ino import model as model_lib
from vosjax.ops import affinity, color, ema, label_resize, propagation

MASK_STREAM = 1
DROP_PATH_STREAM = 2
FEATURE_SOURCES = ("student", "teacher")


@dataclasses.dataclass(frozen=True)
class INOCrops:
    """Clip uint8 [L, H, W, 3] -> {'global' [L, G, G, 3], 'local' [L, M, S, S, 3]} uint8.

    Every crop of every frame draws its own box and augmentation (`MultiCrop`, normalisation on
    the device). Attributes as `config.data`: global_size, global_scale, local_size,
    local_scale, num_local, augment_global (the paper flips and colour-jitters every crop; the
    released code leaves the global crops as they are).
    """

    global_size: int = 224
    global_scale: tuple[float, float] = (0.8, 0.95)
    local_size: int = 64
    local_scale: tuple[float, float] = (0.05, 0.8)
    num_local: int = 8
    augment_global: bool = True

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        crops = transforms_multicrop.MultiCrop(
            global_size=self.global_size,
            global_scale=tuple(self.global_scale),
            num_global=1,
            local_size=self.local_size,
            local_scale=tuple(self.local_scale),
            num_local=self.num_local,
            augment_global=self.augment_global,
            normalize=None,
        )(clip, rng)
        return {"global": crops["global"][:, 0], "local": crops["local"]}


def make_transform(data: ml_collections.ConfigDict) -> INOCrops:
    """The crops of `config.data`."""
    if data.num_local < 0:
        raise ValueError(f"config.data.num_local={data.num_local}: expected >= 0")
    return INOCrops(
        global_size=data.global_size,
        global_scale=tuple(data.global_scale),
        local_size=data.local_size,
        local_scale=tuple(data.local_scale),
        num_local=data.num_local,
        augment_global=data.augment_global,
    )


class INO:
    """The INO method (`vosjax.train.Method`): model, crops, losses, EMA, segmenter."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        clip_len = config.data.clip_len
        if clip_len < 2 or clip_len % 2:
            raise ValueError(
                f"config.data.clip_len={clip_len}: expected an even number >= 2 (frame pairs "
                "(n, n + L/2))"
            )
        cfg = config.loss
        if not (cfg.global_to_global or cfg.local_to_global) and cfg.out_weight:
            raise ValueError(
                "config.loss: out_weight > 0 needs global_to_global or local_to_global; set "
                "config.loss.out_weight=0 to switch the out-generative terms off"
            )
        if cfg.local_to_global and config.data.num_local < 1:
            raise ValueError("config.loss.local_to_global needs config.data.num_local >= 1")
        if cfg.center_update not in losses.CENTER_UPDATES:
            raise ValueError(
                f"config.loss.center_update={cfg.center_update!r}; expected one of "
                f"{losses.CENTER_UPDATES}"
            )
        if cfg.mim_average not in losses.MIM_AVERAGES:
            raise ValueError(
                f"config.loss.mim_average={cfg.mim_average!r}; expected one of "
                f"{losses.MIM_AVERAGES}"
            )
        if config.mim.style not in mask_generator.MASK_STYLES:
            raise ValueError(
                f"config.mim.style={config.mim.style!r}; expected one of "
                f"{mask_generator.MASK_STYLES}"
            )
        if config.eval.features not in FEATURE_SOURCES:
            raise ValueError(
                f"config.eval.features={config.eval.features!r}; expected one of {FEATURE_SOURCES}"
            )

    def build_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return model_lib.INOModel(config.model, rngs=rngs)

    def make_transform(self) -> INOCrops:
        return make_transform(self.config.data)

    def _masks(self, rng: jax.Array, batch: int, grid: tuple[int, int]) -> jax.Array:
        """bool [batch, h, w]: one MIM mask per clip (or one for all), `config.mim.style`."""
        mim = self.config.mim
        key = jax.random.fold_in(rng, MASK_STREAM)
        sample = lambda k: mask_generator.sample_mim_mask(  # noqa: E731
            k,
            grid,
            prob=mim.prob,
            ratio_range=tuple(mim.ratio_range),
            min_block=mim.min_block,
            style=mim.style,
        )
        if mim.shared_mask:
            return jnp.broadcast_to(sample(key), (batch, *grid))
        return jax.vmap(sample)(jax.random.split(key, batch))

    def loss_fn(
        self,
        model: model_lib.INOModel,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The INO loss of a batch of clips (see the module docstring)."""
        cfg = self.config.loss
        dtype = model.student.cls_token[...].dtype  # bf16 under mixed precision
        glob = batch["global"]
        b, t, size = glob.shape[:3]
        p = model.student.patch_size
        grid = (size // p, size // p)
        n = grid[0] * grid[1]
        images = color.normalize_frames(glob.reshape(b * t, *glob.shape[2:])).astype(dtype)
        masks = self._masks(rng, b, grid)  # [B, h, w]
        if not cfg.mim_weight and not cfg.affinity_weight:
            masks = jnp.zeros_like(masks)
        frame_masks = jnp.repeat(masks, t, axis=0)  # [B T, h, w]
        drop_key = jax.random.fold_in(rng, DROP_PATH_STREAM)

        student = model_lib.tokens_through_head(
            model.student, model.student_head, images, masks=frame_masks, train=True,
            key=drop_key,
        )  # fmt: skip
        teacher_vit = model_lib.cast_floats(model.teacher, dtype)
        teacher_head = model_lib.cast_floats(model.teacher_head, dtype)
        teacher = jax.lax.stop_gradient(
            model_lib.tokens_through_head(teacher_vit, teacher_head, images)
        )
        s_cls = student["cls"].reshape(b, t, -1)
        t_cls = teacher["cls"].reshape(b, t, -1)

        terms = {}
        local = None
        if cfg.out_weight and cfg.local_to_global:
            crops = batch["local"]
            m = crops.shape[2]
            local_images = crops.reshape(b * t * m, *crops.shape[3:])
            local_images = color.normalize_frames(local_images).astype(dtype)
            local = model_lib.tokens_through_head(
                model.student, model.student_head, local_images, train=True,
                key=jax.random.fold_in(drop_key, 1), with_patches=False,
            )["cls"].reshape(b, t, m, -1)  # fmt: skip
        per_call = cfg.center_update == "per_call"
        momentum = self.config.center_momentum
        center_cls = model.center_cls[...]
        center_patch = model.center_patch[...]
        if cfg.out_weight:
            terms["out_loss"], center_cls = losses.out_generative_frame_pairs(
                t_cls,
                s_cls,
                local,
                center_cls,
                teacher_temp=cfg.teacher_temp,
                student_temp=cfg.student_temp,
                center_momentum=momentum,
                global_to_global=cfg.global_to_global,
                local_to_global=cfg.local_to_global,
                center_update=cfg.center_update,
            )
        if cfg.mim_weight:
            terms["mim_loss"], center_patch = losses.mim_loss_frames(
                teacher["patches"].reshape(b, t, n, -1),
                student["patches"].reshape(b, t, n, -1),
                masks.reshape(b, n),
                center_patch,
                teacher_temp=cfg.teacher_temp,
                student_temp=cfg.student_temp,
                center_momentum=momentum,
                average=cfg.mim_average,
                center_update=cfg.center_update,
            )
        if cfg.affinity_weight:
            terms["affinity_loss"] = losses.affinity_loss(
                teacher["patches"].reshape(b, t, n, -1),
                student["patches"].reshape(b, t, n, -1),
                masks.reshape(b, n),
                teacher_temp=cfg.affinity_teacher_temp,
                student_temp=cfg.affinity_student_temp,
            )
        weights = {
            "out_loss": cfg.out_weight,
            "mim_loss": cfg.mim_weight,
            "affinity_loss": cfg.affinity_weight,
        }
        loss = sum(weights[name] * value for name, value in terms.items())
        if not per_call:
            # One update per step from every teacher output, whether or not a loss used them.
            center_cls = losses.update_center(model.center_cls[...], teacher["cls"], momentum)
            center_patch = losses.update_center(
                model.center_patch[...], teacher["patches"], momentum
            )
        # 'per_call': a centre moves only inside the loss that uses it (the released DINOLoss),
        # so a loss switched off leaves its centre where it is.
        model.center_cls[...] = center_cls
        model.center_patch[...] = center_patch
        return jnp.asarray(loss, jnp.float32), {
            **terms,
            "mask_ratio": jnp.mean(masks.astype(jnp.float32)),
            "teacher_momentum": self.momentum(step),
        }

    def momentum(self, step: jax.Array | int) -> jax.Array:
        """The EMA momentum after step `step` (cosine from config.ema.base to 1)."""
        return ema.cosine_momentum(
            step, self.config.num_train_steps, base=self.config.ema.base, final=1.0
        )

    def after_update(self, model: model_lib.INOModel, step: jax.Array) -> None:
        """The EMA teacher update, inside the jitted step, after the optimiser's update."""
        model.update_teacher(self.momentum(step))

    def make_segmenter(self, model: model_lib.INOModel) -> evaluate.PropagationSegmenter:
        """Propagation over block features: `config.eval.propagation` (the 'ino' preset), with
        `config.eval.youtube_vos_propagation` on top for the YouTube-VOS layout."""
        ev = self.config.eval
        backbone = model.student if ev.features == "student" else model.teacher
        # The reader's short side is eval.short_side (INO: 480 on DAVIS, None on YouTube-VOS),
        # so that the writer upsamples to the size the features were computed at.
        settings = ev.propagation.to_dict() | {"short_side": ev.short_side, "fit": "resize"}
        if ev.layout == "youtube_vos":  # INO: 20 recent frames and R=50 on YouTube-VOS
            settings |= ev.youtube_vos_propagation.to_dict()
        return evaluate.PropagationSegmenter(
            INOFeatures(
                backbone,
                block=ev.block,
                short_side=ev.short_side,
                std=tuple(ev.get("input_std", color.DINO_EVAL_STD)),
            ),
            propagation.from_config_dict(settings),
        )


def resized_size(size: tuple[int, int], short_side: int | None, patch: int) -> tuple[int, int]:
    """(H', W') as INO's `read_frame`: the short side becomes exactly `short_side` and the long
    side int(short_side * long / short) floored to a multiple of `patch` (480 x 854 -> 480 x
    848; 720 x 1280 -> 480 x 848, floored, not rounded); None floors both sides."""
    return label_resize.reader_size(size, short_side, patch, "resize")


class INOFeatures:
    """frame uint8 [H, W, 3] -> L2-normalised patch tokens of block `block` [h, w, D].

    As INO's inference reader: the uint8 frame is resized by OpenCV (INTER_LINEAR) to
    `resized_size`, scaled to [0, 1] and normalised with `std` (DINO's eval reader: 0.228 for
    red; `color.IMAGENET_STD` is the training one); block `block`'s tokens pass through the
    final LayerNorm (`get_intermediate_layers`). Holds a snapshot of the backbone's weights (a
    teacher's `Teacher` variables work as they are); one jit compilation per frame size.
    """

    def __init__(
        self,
        backbone: nnx.Module,
        *,
        block: int,
        short_side: int | None = 480,
        std: tuple[float, float, float] = color.DINO_EVAL_STD,
    ):
        if not 1 <= block <= backbone.depth:
            raise ValueError(f"config.eval.block={block}: expected 1..{backbone.depth}")
        self.block = block
        self.short_side = short_side
        self.std = tuple(float(s) for s in std)
        self.patch = backbone.patch_size
        self.graphdef, self.state = nnx.split(backbone)

        def extract(state: Any, frame: jax.Array) -> jax.Array:
            module = nnx.merge(self.graphdef, state)
            images = color.normalize_frames(frame, std=self.std)[None]
            out = module(images, return_blocks=(self.block,))  # later blocks: dead code
            tokens = out["blocks"][self.block][0, 1:].astype(jnp.float32)
            h, w = frame.shape[0] // self.patch, frame.shape[1] // self.patch
            return tokens.reshape(h, w, -1)

        self._extract = jax.jit(extract)
        self.normalize = jax.jit(affinity.l2_normalize)  # [..., D] -> unit vectors

    def __call__(self, frame: np.ndarray) -> jax.Array:
        return self.normalize(self.tokens(frame))

    def tokens(self, frame: np.ndarray) -> jax.Array:
        """uint8 [H, W, 3] -> block `block`'s patch tokens after the final LayerNorm, before the
        L2 normalisation: float32 [h, w, D] (INO's `extract_feature`)."""
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"INOFeatures: expected a frame [H, W, 3], got {frame.shape}")
        return self._extract(self.state, jnp.asarray(self.read(frame)))

    def read(self, frame: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> uint8 [H', W', 3] at `resized_size` (OpenCV INTER_LINEAR)."""
        size = resized_size(frame.shape[:2], self.short_side, self.patch)
        return label_resize.read_frame(np.asarray(frame, np.uint8), size, "resize")
