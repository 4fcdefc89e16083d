"""Reads PyTorch checkpoint files (`torch.save`) and `.npz` state_dicts into numpy, without PyTorch.

A `.pth`/`.pt` file written by torch >= 1.6 is a zip archive: `<archive>/data.pkl` (the pickled
object; protocol 2) refers to tensor storages stored raw as `<archive>/data/<key>` in the byte
order that `<archive>/byteorder` names (little when absent). `read` unpickles `data.pkl` with a
restricted unpickler that rebuilds every tensor as a numpy array (any stride and offset into a
storage, storages shared between tensors) and knows only the few classes that checkpoints hold:
tensors and their storages, `collections.OrderedDict`, `argparse.Namespace` (INO and DINO save
their arguments), numpy scalars and arrays. Anything else is refused with an error naming the file
and the class, so reading a file never runs code from it.

Tensor dtypes keep their numpy equivalent (float16 stays float16, int64 int64) except bfloat16,
which numpy lacks: it becomes float32 (exactly). The legacy non-zip format of torch < 1.6 needs
PyTorch itself (`pip install -e .[torch]`); when PyTorch is installed it reads those files with
`torch.load(..., weights_only=False)`: torch >= 2.6 refuses checkpoints holding an
`argparse.Namespace` under its default `weights_only=True`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import pathlib
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

INSTALL_HINT = "pip install -e .[torch]"

# torch's typed storage classes (`torch.FloatStorage`, ...) -> the numpy dtype of their elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# torch dtypes named in pickles (`_rebuild_tensor_v3` passes one) -> numpy dtype names.
_TORCH_DTYPES = {
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64",
    "complex128": "complex128",
}


class TorchFileError(ValueError):
    """A checkpoint file cannot be read (names the file and why)."""


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A tensor storage: its elements as a flat numpy array (bfloat16 as raw uint16)."""

    data: np.ndarray
    dtype: str  # the storage's element type ('bfloat16' when `data` holds its raw bits)
    endian: str  # '<' or '>': the file's byte order


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: str  # 'uint8' for torch.UntypedStorage


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
    name: str


class _TensorClass:
    """Stands for torch.Tensor / torch.nn.Parameter in `_rebuild_from_type_v2`."""


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _numpy_dtype(name: str) -> np.dtype:
    return np.dtype(np.uint16 if name == "bfloat16" else name)


def _tensor(
    path: str, storage: _Storage, offset: int, size: tuple, stride: tuple, dtype: str | None = None
) -> np.ndarray:
    """The tensor of `size` and `stride` (in elements) at `offset` of `storage`, as a new array."""
    data, kind = storage.data, storage.dtype
    if dtype is not None and dtype != kind:  # an untyped (byte) storage viewed as `dtype`
        if kind != "uint8":
            raise TorchFileError(f"{path}: a {kind} storage read as {dtype}")
        element = _numpy_dtype(dtype).newbyteorder(storage.endian)
        data, kind = data[: data.size - data.size % element.itemsize].view(element), dtype
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise TorchFileError(f"{path}: a tensor of size {size} has stride {stride}")
    if any(s == 0 for s in size):
        array = np.zeros(size, _numpy_dtype(kind))
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if offset < 0 or min(stride, default=0) < 0 or last >= data.size:
            raise TorchFileError(
                f"{path}: a tensor of size {size}, stride {stride} at offset {offset} reaches "
                f"past its storage of {data.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * data.itemsize for s in stride], writeable=False
        )
        array = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")  # native order
    return _bfloat16_to_float32(array) if kind == "bfloat16" else array


class _Unpickler(pickle.Unpickler):
    """Rebuilds tensors as numpy arrays; refuses every class a checkpoint does not need."""

    def __init__(self, file: Any, path: str, read_storage: Callable[[str, str, int], _Storage]):
        super().__init__(file)
        self._path = path
        self._read_storage = read_storage
        self._storages: dict[str, _Storage] = {}

    def persistent_load(self, saved_id: Any) -> _Storage:
        if not (
            isinstance(saved_id, tuple) and saved_id and saved_id[0] in ("storage", b"storage")
        ):
            raise TorchFileError(f"{self._path}: unknown persistent id {saved_id!r:.80}")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self._path}: storage {key} of unknown type {storage_type!r}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.dtype, int(numel))
        return self._storages[key]

    def find_class(self, module: str, name: str) -> Any:
        path = self._path
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):

            def rebuild_v2(storage, offset, size, stride, *unused):
                return _tensor(path, storage, offset, size, stride)

            return rebuild_v2
        if module == "torch._utils" and name == "_rebuild_tensor_v3":

            def rebuild_v3(storage, offset, size, stride, grad, hooks, dtype, *unused):
                return _tensor(path, storage, offset, size, stride, dtype.name)

            return rebuild_v3
        if module == "torch._utils" and name in (
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
        ):
            return lambda data, *unused: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, new_type, args, state: func(*args)
        if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
            return _TensorClass
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module in ("torch", "torch.storage") and name == "UntypedStorage":
            return _StorageType("uint8")
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(_TORCH_DTYPES[name])
        if (module, name) == ("torch", "Size"):
            return tuple
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        if module == "builtins" and name in ("set", "frozenset", "complex"):
            return getattr(__import__("builtins"), name)
        if (module, name) == ("_codecs", "encode"):
            # Protocol 2 pickles bytes (a numpy scalar's payload) as encode(str, 'latin1').
            return lambda text, encoding="utf-8": text.encode(encoding)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "scalar",
            "_reconstruct",
        ):
            return getattr(_multiarray, name)
        if (module, name) in (("numpy", "dtype"), ("numpy", "ndarray")):
            return getattr(np, name)
        raise TorchFileError(
            f"{path}: refusing to unpickle {module}.{name}: a checkpoint is read without running "
            "code from it, and only tensors, OrderedDict, argparse.Namespace and numpy scalars "
            "are known (save a state_dict, or convert the file to .npz)"
        )


def _read_zip(path: pathlib.Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            if any(n.endswith("/constants.pkl") for n in names):
                raise TorchFileError(
                    f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint: save the "
                    "model's state_dict with torch.save"
                )
            raise TorchFileError(
                f"{path}: a zip file without <archive>/data.pkl: not a torch.save checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise TorchFileError(f"{path}: unknown byte order {byteorder!r}")
        endian = "<" if byteorder == "little" else ">"

        def read_storage(key: str, dtype: str, numel: int) -> _Storage:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise TorchFileError(f"{path}: the storage {name} is missing")
            element = _numpy_dtype(dtype).newbyteorder(endian)
            raw = archive.read(name)
            if len(raw) < numel * element.itemsize:
                raise TorchFileError(
                    f"{path}: storage {name} holds {len(raw)} bytes; {numel} {dtype} elements "
                    f"need {numel * element.itemsize}"
                )
            return _Storage(np.frombuffer(raw, element, count=numel), dtype, endian)

        with archive.open(pickles[0]) as file:
            try:
                return _Unpickler(file, str(path), read_storage).load()
            except TorchFileError:
                raise
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError) as e:
                raise TorchFileError(f"{path}: cannot unpickle {pickles[0]}: {e}") from e


def _torch_to_numpy(value: Any, torch: Any) -> Any:
    """torch.load's result with every tensor as a numpy array (bfloat16 as float32)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, collections.OrderedDict):
        return collections.OrderedDict((k, _torch_to_numpy(v, torch)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _torch_to_numpy(v, torch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_torch_to_numpy(v, torch) for v in value)
    return value


def _read_with_torch(path: pathlib.Path) -> Any:
    try:
        import torch
    except ImportError as e:
        raise TorchFileError(
            f"{path}: not a zip archive, i.e. the legacy format of torch < 1.6 (or not a "
            f"checkpoint); reading it needs PyTorch: {INSTALL_HINT}"
        ) from e
    # weights_only=False: the released checkpoints hold argparse.Namespace objects, which
    # torch >= 2.6 refuses by default. Only for files the user chose to import.
    return _torch_to_numpy(torch.load(path, map_location="cpu", weights_only=False), torch)


def read(path: str | os.PathLike) -> Any:
    """The object saved in a `.pth`/`.pt` checkpoint or a `.npz`, with tensors as numpy arrays.

    Args:
      path: a file written by `torch.save` (zip format, torch >= 1.6; the legacy format when
        PyTorch is installed), or a `.npz` of a state_dict (name -> array).

    Returns:
      What was saved (dicts, OrderedDicts, argparse.Namespace, lists, numbers) with every tensor
      as a numpy array; a `.npz` gives {name: array} in the file's order.

    Raises:
      FileNotFoundError: no such file.
      TorchFileError: the file is not a checkpoint, holds classes other than those listed in
        the module docstring, or is in the legacy format and PyTorch is not installed.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return collections.OrderedDict((k, arrays[k]) for k in arrays.files)
        except ValueError as e:
            raise TorchFileError(f"{path}: not a .npz of plain arrays ({e})") from e
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_with_torch(path)
