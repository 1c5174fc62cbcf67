"""Arrays on the wire: `distill.v1.Tensor` is a dtype, a shape and packed little-endian bytes.

One `bytes` field per array instead of one protobuf value per number: packing a [4096, 64] block
is a memcpy, while a repeated-float field builds and parses 262,144 Python floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distill.v1 import teacher_pb2 as pb

# Wire dtype -> little-endian numpy dtype.
_NUMPY = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT32: np.dtype("<i4"),
}
_WIRE = {np.dtype(v).newbyteorder("="): k for k, v in _NUMPY.items()}
_NAMES = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16, "int32": pb.DTYPE_INT32}


class PackError(ValueError):
    """A Tensor message whose bytes do not match its dtype and shape."""


def wire_dtype(name: str | int) -> int:
    """'float32' / 'float16' / 'int32' (or a DType value) -> the DType enum value."""
    if isinstance(name, int):
        return name
    try:
        return _NAMES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_NAMES)}") from None


def pack(array: np.ndarray | torch.Tensor, dtype: str | int | None = None,
         into: pb.Tensor | None = None) -> pb.Tensor:
    """Pack an array (numpy or torch, any device) into a Tensor, converting to `dtype` if given.
    `into`: a Tensor field of a message being built, filled in place (a message passed to a
    constructor or assigned is copied whole, its bytes included)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    elif not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if dtype is not None:
        array = array.astype(_NUMPY[wire_dtype(dtype)], copy=False)
    wire = _WIRE.get(array.dtype.newbyteorder("="))
    if wire is None:
        raise PackError(f"cannot pack dtype {array.dtype}; use float32, float16 or int32")
    if array.dtype != _NUMPY[wire]:          # big-endian input: swap to the wire's order
        array = array.astype(_NUMPY[wire])
    # tobytes() writes C order whatever the strides: a called-per-sequence hot path, kept lean
    tensor = pb.Tensor() if into is None else into
    tensor.dtype, tensor.data = wire, array.tobytes()
    tensor.shape[:] = array.shape
    return tensor


def unpack(tensor: pb.Tensor, *, name: str = "tensor") -> np.ndarray:
    """Unpack a Tensor into a read-only numpy array (no copy). Raises PackError when malformed."""
    if tensor.dtype not in _NUMPY:
        raise PackError(f"{name}: unknown dtype {tensor.dtype}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise PackError(f"{name}: negative dimension in shape {list(shape)}")
    itemsize = _NUMPY[tensor.dtype].itemsize
    expected = math.prod(shape) * itemsize
    if len(tensor.data) != expected:
        raise PackError(
            f"{name}: {len(tensor.data)} bytes do not match shape {list(shape)} of "
            f"{pb.DType.Name(tensor.dtype)} ({expected} bytes expected)"
        )
    try:
        return np.frombuffer(tensor.data, dtype=_NUMPY[tensor.dtype]).reshape(shape)
    except ValueError as exc:   # no elements but more dimensions, or larger ones, than numpy takes
        raise PackError(f"{name}: shape {list(shape)} is not a valid array shape ({exc})") from None


def unpack_torch(tensor: pb.Tensor, *, name: str = "tensor") -> torch.Tensor:
    """Unpack into a CPU torch tensor in native byte order (copies: torch wants writable memory)."""
    array = unpack(tensor, name=name)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))
