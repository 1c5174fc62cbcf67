"""The arrays of a request, checked by rule: a field's dtype and shape are declared at the call
(`unpack_checked(tensor, "packed.lengths", INT32, [Dim("B")])`) instead of written out as an `if`
each, and every refusal reads the same way: what the field must be, and what came.

    packed.token_ids must be DTYPE_INT32 of shape [9] (packed.lengths add up to 9), got DTYPE_INT32 [10]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.tensors import PackError, unpack
from distill.v1 import teacher_pb2 as pb
from teacher_server.errors import InvalidRequest
from teacher_server.protocol.request import Limits

INT32, FLOAT32 = pb.DTYPE_INT32, pb.DTYPE_FLOAT32


@dataclass(frozen=True)
class Dim:
    """A dimension whose size the sender picks, between low and high (None: no upper bound)."""

    name: str
    low: int = 0
    high: int | None = None

    def holds(self, size: int) -> bool:
        return self.low <= size and (self.high is None or size <= self.high)

    def rule(self) -> str:
        """The bounds as the message states them ("" when any size goes)."""
        if self.high is not None:
            return f"{self.low} <= {self.name} <= {self.high}"
        return f"{self.name} >= {self.low}" if self.low else ""


Shape = list   # one entry per dimension: an int (that exact size) or a Dim


def unpack_checked(tensor: pb.Tensor, name: str, dtype: int, *shapes: Shape,
                   why: str = "") -> np.ndarray:
    """Field `name` unpacked (read-only, no copy), if it is `dtype` with one of `shapes`; else
    INVALID_ARGUMENT saying so. `why` says where the expected sizes come from."""
    array = _unpack(tensor, name)
    if tensor.dtype == dtype and any(_fits(array.shape, shape) for shape in shapes):
        return array
    rules = list(dict.fromkeys(d.rule() for shape in shapes for d in shape
                               if isinstance(d, Dim) and d.rule()))
    expected = " or ".join("[" + ", ".join(d.name if isinstance(d, Dim) else str(d) for d in shape)
                           + "]" for shape in dict.fromkeys(map(tuple, shapes)))
    raise InvalidRequest(f"{name} must be {pb.DType.Name(dtype)} of shape {expected}"
                         + (f" with {', '.join(rules)}" if rules else "")
                         + (f" ({why})" if why else "")
                         + f", got {pb.DType.Name(tensor.dtype)} {list(array.shape)}")


def _fits(actual: tuple, shape: Shape) -> bool:
    return len(actual) == len(shape) and all(
        d.holds(n) if isinstance(d, Dim) else n == d for n, d in zip(actual, shape))


def _unpack(tensor: pb.Tensor, name: str) -> np.ndarray:
    try:
        return unpack(tensor, name=name)
    except PackError as exc:   # bytes that do not match the shape, an unknown dtype
        raise InvalidRequest(str(exc)) from None


def id_vector(tensor: pb.Tensor, name: str) -> np.ndarray:
    """A sequence's token ids as sent: int32 [T], T >= 1 (not yet checked against the model)."""
    if not tensor.ByteSize():
        raise InvalidRequest(f"{name}: missing token ids")
    ids = unpack_checked(tensor, name, INT32, [Dim("T")], why="one id per token")
    if ids.size == 0:
        raise InvalidRequest(f"{name}: empty sequence")
    return ids


def token_ids(tensor: pb.Tensor, name: str, limits: Limits) -> torch.Tensor:
    """A sequence's token ids as int64 [T], within the teacher's context and vocabulary."""
    ids = id_vector(tensor, name)
    if ids.size > limits.max_context:
        raise InvalidRequest(f"{name}: {ids.size} tokens exceed the teacher's context of "
                             f"{limits.max_context} tokens; truncate or split it")
    ids = torch.from_numpy(ids.astype("int64"))
    check_vocab(ids, name, limits)
    return ids


def check_vocab(ids: torch.Tensor, name: str, limits: Limits) -> None:
    """Every id of `ids` (any shape) is in the vocabulary; the message names the first one not."""
    if not ids.numel() or (ids.min() >= 0 and ids.max() < limits.vocab_size):
        return   # the common case, checked without building an index
    pos = tuple(((ids < 0) | (ids >= limits.vocab_size)).nonzero()[0].tolist())
    raise outside_vocabulary(name, ids[pos].item(), pos[0] if len(pos) == 1 else list(pos), limits)


def outside_vocabulary(name: str, token: int, at, limits: Limits) -> InvalidRequest:
    return InvalidRequest(f"{name}: token id {token} at position {at} is outside the vocabulary "
                          f"[0, {limits.vocab_size})")
