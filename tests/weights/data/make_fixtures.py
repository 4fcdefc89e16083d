"""Writes the small PyTorch checkpoint files that tests/weights read (needs real PyTorch).

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install numpy torch==2.13.0
    /tmp/torchvenv/bin/python tests/weights/data/make_fixtures.py

The files are written by `torch.save` itself, in the layouts the authors' trainers save (their
keys, nesting and name prefixes), with tiny tensors, so that the tests check vosjax's reader
(which does not need PyTorch) on what PyTorch really writes. Next to each `.pth` an
`*_expected.npz` holds the tensors as PyTorch itself converts them to numpy (bfloat16 through
float32), for the tests to compare with.

- tensors.pth: every kind of tensor and object the reader must handle: float32/64, float16,
  bfloat16, int64 (beyond 2**32), int8, uint8, bool, uint16 (torch's `_rebuild_tensor_v3`),
  0-d, empty, a transposed (non-contiguous) view, a view at an offset into a larger storage, two
  tensors sharing one storage, an nn.Parameter, a module state_dict (an OrderedDict with
  `_metadata`), an argparse.Namespace, numpy scalars and a numpy array, lists and tuples.
- big_endian.pth: tensors.pth's float32 part rewritten as a big-endian file (`byteorder` = big,
  storages byte-swapped), as torch.save writes on a big-endian machine.
- legacy.pth: the non-zip format of torch < 1.6 (`_use_new_zipfile_serialization=False`).
- ino_checkpoint.pth: INO's main_VOS.py checkpoint (`student` under DataParallel's
  `module.backbone.*` / `module.headlist.headlist.0.*`, `teacher` without `module.`, `optimizer`,
  `epoch`, `args`, `dino_loss_cls_list`, `dino_loss_hw_list`, `fp16_scaler`) of a tiny ViT
  (width 8, 2 blocks, 2 heads, patch 8, 4 x 4 position grid) and head (hidden 8, bottleneck 4,
  8 prototypes); configs/ino/vits8_davis2016.py:smoke with INO_SMOKE_OVERRIDES builds that model.
- dino_backbone.pth: DINO's released backbone file (the plain ViT state_dict, no mask token;
  1 block, patch 2).
- maskvos_checkpoint.pth: Mask-VOS's utils/checkpoints.py file (`model`, `opt`, `score`,
  `epoch`) with a few tensors under the released FrameworkMask names.
- shls_checkpoint.pth: SHLS's utils_LT.save_model file (`model` of a DDP-wrapped net, so
  `module.` prefixes, `optimizer`, `epoch`, `top_iou`, `global_ite`, `test_ite`).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import zipfile

import numpy as np
import torch
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent

# The tiny INO model of the fixture (see INO_SMOKE_OVERRIDES in tests/weights/import_weights_test).
WIDTH, DEPTH, PATCH, GRID, HIDDEN, BOTTLENECK, PROTOTYPES = 8, 2, 8, 4, 8, 4, 8


def as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


def tensors() -> dict:
    torch.manual_seed(0)
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8) / 8
    shared = torch.randn(4, 3)
    linear = nn.Linear(3, 2)
    return {
        "f32": torch.randn(2, 3),
        "f64": torch.randn(3, dtype=torch.float64),
        "f16": torch.randn(2, 2).half(),
        "bf16": torch.tensor([1.0, -2.5, 3.140625, 1e-3, 65280.0]).bfloat16(),
        "i64": torch.tensor([0, -1, 2**40 + 3, -(2**35)], dtype=torch.int64),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "u16": torch.tensor([0, 40000, 65535], dtype=torch.uint16),
        "scalar": torch.tensor(3.5),
        "num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "transposed": base.t(),
        "offset_view": base[1:4, 2:7:2],
        "shared_full": shared,
        "shared_row": shared[2],
        "param": nn.Parameter(torch.randn(2, 2)),
        "module": linear.state_dict(),
        "args": argparse.Namespace(arch="vit_small", patch_size=8, lr=5e-4, layers=[7]),
        "np_float": np.float64(0.675),
        "np_int": np.int64(12),
        "np_array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "nested": {"list": [torch.ones(2), 1, "a"], "betas": (0.9, 0.999), "none": None},
    }


def flat_tensors(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = as_numpy(value)
        elif isinstance(value, dict):
            out.update(flat_tensors(value, f"{name}/"))
    return out


def write_big_endian(source: pathlib.Path, target: pathlib.Path) -> None:
    """`source` (float32 storages only) as torch.save writes it on a big-endian machine."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info, data)


def vit_state(
    prefix: str, *, mask_token: bool, scale: float, depth: int = DEPTH, patch: int = PATCH
) -> dict[str, torch.Tensor]:
    """The released VisionTransformer's state_dict names and shapes (tiny), random values."""
    d = WIDTH
    shapes = [("cls_token", (1, 1, d))]
    if mask_token:
        shapes.append(("mask_token", (1, 1, d)))
    shapes += [
        ("pos_embed", (1, 1 + GRID * GRID, d)),
        ("patch_embed.proj.weight", (d, 3, patch, patch)),
        ("patch_embed.proj.bias", (d,)),
    ]
    for i in range(depth):
        b = f"blocks.{i}"
        shapes += [
            (f"{b}.norm1.weight", (d,)),
            (f"{b}.norm1.bias", (d,)),
            (f"{b}.attn.qkv.weight", (3 * d, d)),
            (f"{b}.attn.qkv.bias", (3 * d,)),
            (f"{b}.attn.proj.weight", (d, d)),
            (f"{b}.attn.proj.bias", (d,)),
            (f"{b}.norm2.weight", (d,)),
            (f"{b}.norm2.bias", (d,)),
            (f"{b}.mlp.fc1.weight", (4 * d, d)),
            (f"{b}.mlp.fc1.bias", (4 * d,)),
            (f"{b}.mlp.fc2.weight", (d, 4 * d)),
            (f"{b}.mlp.fc2.bias", (d,)),
        ]
    shapes += [("norm.weight", (d,)), ("norm.bias", (d,))]
    return collections.OrderedDict(
        (prefix + name, (1.0 if name.endswith("norm1.weight") else 0.0) + scale * torch.randn(s))
        for name, s in shapes
    )


def head_state(prefix: str, scale: float) -> dict[str, torch.Tensor]:
    """DINOHead (3 layers, torch.nn.utils.weight_norm on the last) names and shapes."""
    shapes = [
        ("mlp.0.weight", (HIDDEN, WIDTH)),
        ("mlp.0.bias", (HIDDEN,)),
        ("mlp.2.weight", (HIDDEN, HIDDEN)),
        ("mlp.2.bias", (HIDDEN,)),
        ("mlp.4.weight", (BOTTLENECK, HIDDEN)),
        ("mlp.4.bias", (BOTTLENECK,)),
        ("last_layer.weight_g", (PROTOTYPES, 1)),
        ("last_layer.weight_v", (PROTOTYPES, BOTTLENECK)),
    ]
    return collections.OrderedDict((prefix + n, scale * torch.randn(s)) for n, s in shapes)


def ino_checkpoint() -> dict:
    torch.manual_seed(1)
    student = vit_state("module.backbone.", mask_token=True, scale=0.2)
    student.update(head_state("module.headlist.headlist.0.", 0.3))
    teacher = vit_state("backbone.", mask_token=True, scale=0.1)
    teacher.update(head_state("headlist.headlist.0.", 0.15))
    # A real AdamW state over (a part of) the student after one step.
    params = [nn.Parameter(v.clone()) for k, v in student.items() if "headlist" in k]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    sum((p**2).sum() for p in params).backward()
    optimizer.step()
    args = argparse.Namespace(
        arch="vit_small",
        patch_size=PATCH,
        out_dim=PROTOTYPES,
        multi_scale_layer=[1],
        use_fp16=True,
        lr=0.0005,
        global_crops_scale=(0.8, 0.95),
        output_dir="./output",
    )
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": optimizer.state_dict(),
        "epoch": 25,
        "args": args,
        "dino_loss_cls_list": collections.OrderedDict({"0.center": torch.randn(1, PROTOTYPES)}),
        "dino_loss_hw_list": collections.OrderedDict({"0.center": torch.randn(1, PROTOTYPES)}),
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 120},
    }


class _Named(nn.Module):
    """Modules at dotted paths (so that state_dict() gives the released names)."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        for path, module in modules.items():
            parent = self
            *head, last = path.split(".")
            for part in head:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(last, module)


def maskvos_checkpoint() -> dict:
    torch.manual_seed(2)
    net = _Named(
        {
            "fast_net.backbone.conv1": nn.Conv2d(3, 4, 3, bias=False),
            "fast_net.backbone.bn1": nn.BatchNorm2d(4),
            "decoder.pred": nn.Conv2d(4, 1, 3),
        }
    )
    net.fast_net.backbone.bn1.train()
    net.fast_net.backbone.bn1(net.fast_net.backbone.conv1(torch.randn(2, 3, 8, 8)))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    sum((p**2).sum() for p in net.parameters()).backward()
    optimizer.step()
    return {
        "model": net.state_dict(),
        "opt": optimizer.state_dict(),
        "score": np.float64(0.6755),
        "epoch": 120,
    }


def shls_checkpoint() -> dict:
    torch.manual_seed(3)
    net = _Named(
        {
            "spx_embedding.feat_extractor.conv1.0": nn.Conv2d(3, 4, 3, bias=False),
            "spx_embedding.feat_extractor.conv1.1": nn.BatchNorm2d(4),
            "sf_conv_1x1.0": nn.Conv2d(2, 1, 1),
        }
    )
    wrapped = nn.DataParallel(net)  # what DDP adds to the names: 'module.'
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sum((p**2).sum() for p in net.parameters()).backward()
    optimizer.step()
    return {
        "model": wrapped.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 30,
        "top_iou": np.float64(0.71),
        "global_ite": 12000,
        "test_ite": 30,
    }


def main() -> None:
    tree = tensors()
    torch.save(tree, HERE / "tensors.pth")
    np.savez(HERE / "tensors_expected.npz", **flat_tensors(tree))
    floats = {"f32": tree["f32"], "transposed": tree["transposed"], "offset": tree["offset_view"]}
    torch.save(floats, HERE / "little_endian.tmp")
    write_big_endian(HERE / "little_endian.tmp", HERE / "big_endian.pth")
    (HERE / "little_endian.tmp").unlink()
    assert all(torch.equal(v, floats[k]) for k, v in torch.load(HERE / "big_endian.pth").items())
    legacy = {"w": tree["f32"], "n": torch.tensor([1, 2], dtype=torch.int64)}
    torch.save(legacy, HERE / "legacy.pth", _use_new_zipfile_serialization=False)

    ino = ino_checkpoint()
    torch.save(ino, HERE / "ino_checkpoint.pth")
    torch.manual_seed(4)
    torch.save(
        vit_state("", mask_token=False, scale=0.2, depth=1, patch=2), HERE / "dino_backbone.pth"
    )
    for name, make in (("maskvos", maskvos_checkpoint), ("shls", shls_checkpoint)):
        saved = make()
        torch.save(saved, HERE / f"{name}_checkpoint.pth")
        np.savez(HERE / f"{name}_checkpoint_expected.npz", **flat_tensors(saved))
    for path in sorted(HERE.glob("*.pth")) + sorted(HERE.glob("*.npz")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
