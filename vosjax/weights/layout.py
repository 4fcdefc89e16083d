"""PyTorch state_dict tensors -> flax.nnx variables: layouts, and strict name/shape bookkeeping.

Every conversion between PyTorch's layouts and vosjax's happens here and nowhere else:
- convolution kernels OIHW -> HWIO (`conv_kernel`);
- linear weights [out, in] -> [in, out] (`linear_kernel`);
- weight-normalised linear layers (`weight_g`, `weight_v`) -> their effective kernel;
- BatchNorm affine terms and running statistics -> nnx.BatchNorm / FrozenBatchNorm variables.

A `StateDictReader` hands out tensors by name and remembers which were taken, so that a converter
ends with `finish()`: a tensor the converter needed but the state_dict lacks, a tensor left over,
or a tensor whose shape differs from the vosjax variable's is an error that names the tensor and
both shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


class WeightImportError(ValueError):
    """A state_dict does not fit the vosjax module it is imported into."""


class StateDictReader:
    """Hands out a state_dict's tensors by name; `finish()` fails on tensors nobody took."""

    def __init__(self, state_dict: Mapping[str, np.ndarray], source: str = "state_dict"):
        """Args:
        state_dict: PyTorch parameter/buffer name -> array (as `torch.load` gives, as numpy).
        source: what the tensors came from (a file name), for error messages.
        """
        self._state = dict(state_dict)
        self._taken: set[str] = set()
        self.source = source

    def __contains__(self, name: str) -> bool:
        return name in self._state

    def names(self, prefix: str = "") -> list[str]:
        """The tensor names that start with `prefix`, in state_dict order."""
        return [n for n in self._state if n.startswith(prefix)]

    def take(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray:
        """The tensor `name` (float32 unless it is an integer buffer), checked against `shape`.

        Raises:
          WeightImportError: the tensor is missing, or its shape is not `shape`.
        """
        if name not in self._state:
            near = [n for n in self._state if n.rsplit(".", 1)[0] == name.rsplit(".", 1)[0]]
            hint = f"; tensors of that module: {near}" if near else ""
            raise WeightImportError(f"{self.source}: missing tensor {name!r}{hint}")
        value = np.asarray(self._state[name])
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise WeightImportError(
                f"{self.source}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(shape)}"
            )
        self._taken.add(name)
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float32)
        return value

    def skip(self, prefix: str) -> list[str]:
        """Marks every tensor under `prefix` as deliberately unused (e.g. a head vosjax has not)."""
        names = self.names(prefix)
        self._taken.update(names)
        return names

    def unused(self) -> list[str]:
        """The names nobody took or skipped, in state_dict order."""
        return [n for n in self._state if n not in self._taken]

    def finish(self) -> None:
        """Raises WeightImportError listing every tensor that was neither taken nor skipped."""
        left = self.unused()
        if left:
            shown = ", ".join(f"{n} {tuple(np.shape(self._state[n]))}" for n in left[:20])
            more = f" and {len(left) - 20} more" if len(left) > 20 else ""
            raise WeightImportError(
                f"{self.source}: {len(left)} unexpected tensor(s) that no vosjax variable takes: "
                f"{shown}{more}"
            )


def assign(variable: nnx.Variable, value: np.ndarray, name: str) -> None:
    """Sets an nnx variable to `value` after checking the shape; `name` is the torch name.

    Raises:
      WeightImportError: the shapes differ (both are named).
    """
    current = variable[...]
    if tuple(current.shape) != tuple(value.shape):
        raise WeightImportError(
            f"tensor {name!r}: converted shape {tuple(value.shape)} does not fit the vosjax "
            f"variable of shape {tuple(current.shape)}"
        )
    variable[...] = jnp.asarray(value, dtype=current.dtype)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [O, I, kh, kw] -> flax kernel [kh, kw, I, O]."""
    if weight.ndim != 4:
        raise WeightImportError(f"conv weight of shape {weight.shape}: expected 4 dims (OIHW)")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def linear_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> flax kernel [in, out]."""
    if weight.ndim != 2:
        raise WeightImportError(f"linear weight of shape {weight.shape}: expected 2 dims")
    return np.ascontiguousarray(weight.T)


def weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch.nn.utils.weight_norm(dim=0): W = g * v / ||v||, the norm over all but dim 0."""
    axes = tuple(range(1, v.ndim))
    norm = np.sqrt(np.sum(np.square(v.astype(np.float64)), axis=axes, keepdims=True))
    return (g.astype(np.float64).reshape(norm.shape) * v / norm).astype(np.float32)


def _load_kernel_and_bias(
    reader: StateDictReader, prefix: str, module: nnx.Module, kernel_fn, kind: str
) -> None:
    """`prefix`.weight through `kernel_fn`, and `prefix`.bias where `module` has a bias."""
    name = f"{prefix}.weight"
    assign(module.kernel, kernel_fn(reader.take(name)), name)
    if module.bias is not None:
        assign(module.bias, reader.take(f"{prefix}.bias"), f"{prefix}.bias")
    elif f"{prefix}.bias" in reader:
        raise WeightImportError(
            f"{reader.source}: tensor {prefix + '.bias'!r} exists but the vosjax {kind} has no bias"
        )


def load_conv(reader: StateDictReader, prefix: str, conv: nnx.Conv) -> None:
    """`prefix`.weight (and `prefix`.bias where the nnx.Conv has one) -> `conv`."""
    _load_kernel_and_bias(reader, prefix, conv, conv_kernel, "conv")


def load_linear(reader: StateDictReader, prefix: str, linear: nnx.Linear) -> None:
    """`prefix`.weight (and `prefix`.bias where the nnx.Linear has one) -> `linear`."""
    _load_kernel_and_bias(reader, prefix, linear, linear_kernel, "linear")


def load_batch_norm(reader: StateDictReader, prefix: str, norm: nnx.Module) -> None:
    """torch BatchNorm (weight, bias, running_mean, running_var) -> nnx.BatchNorm or a module with
    `scale`, `bias`, `mean`, `var` variables (FrozenBatchNorm). num_batches_tracked is dropped."""
    assign(norm.scale, reader.take(f"{prefix}.weight"), f"{prefix}.weight")
    assign(norm.bias, reader.take(f"{prefix}.bias"), f"{prefix}.bias")
    assign(norm.mean, reader.take(f"{prefix}.running_mean"), f"{prefix}.running_mean")
    assign(norm.var, reader.take(f"{prefix}.running_var"), f"{prefix}.running_var")
    reader.skip(f"{prefix}.num_batches_tracked")


def load_layer_norm(reader: StateDictReader, prefix: str, norm: nnx.LayerNorm) -> None:
    """torch LayerNorm (weight, bias) -> nnx.LayerNorm (scale, bias)."""
    assign(norm.scale, reader.take(f"{prefix}.weight"), f"{prefix}.weight")
    assign(norm.bias, reader.take(f"{prefix}.bias"), f"{prefix}.bias")
