"""Unpickling plain data, and nothing else: the reader of CIFAR's python-format files.

The official CIFAR files are Python 2 pickles of a dict with bytes keys, lists of ints and
bytes, and NumPy uint8 arrays. ``load_plain_pickle`` reads such pickles (and the same data
pickled by Python 3 with NumPy 1 or 2, protocols 2 to 5) with an unpickler that admits only the
globals NumPy's array pickles name, each replaced by a checked stand-in, and refuses every other
global: a tampered file cannot run code. It also bounds what a file can make it allocate: the
file's size, the number of pickle opcodes, memo indices, nesting, and arrays whose declared
size must match the bytes the file really holds.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from ssal.errors import UserError

__all__ = ["MAX_OPCODES", "MAX_PICKLE_BYTES", "RefusedGlobal", "load_plain_pickle"]

MAX_PICKLE_BYTES = 384 * 2**20
"""Largest file read: CIFAR-100's training file is 155 MB (231 MB when pickled by Python 3 with
protocol 2)."""

MAX_OPCODES = 2_000_000
"""Most pickle opcodes read (CIFAR-100's training file has 150,000 to 500,000): each opcode can
create an object, so this bounds memory beyond the file's own bytes."""

_MAX_DEPTH = 4  # dict -> list -> bytes is as deep as CIFAR files go
_DTYPES = frozenset(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8)) | frozenset(
    {"b1", "f2", "f4", "f8"}
)
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global (a function or class) that plain data never needs."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class _Dtype:
    """Stand-in for ``numpy.dtype(code, align, copy)`` plus its pickled state."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        self.code, self.state = code, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.dtype:
        code = self.code.decode("latin1") if isinstance(self.code, bytes) else self.code
        if not isinstance(code, str) or code not in _DTYPES:
            raise pickle.UnpicklingError(f"array of type {code!r} (only numbers are read)")
        order = "|"
        if self.state is not None:
            s = self.state
            if (
                not isinstance(s, tuple)
                or len(s) not in (8, 9)
                or any(v is not None for v in s[2:5])
            ):
                raise pickle.UnpicklingError(
                    "structured or sub-array dtype (only numbers are read)"
                )
            order = s[1].decode("latin1") if isinstance(s[1], bytes) else s[1]
            if order not in ("<", ">", "=", "|"):
                raise pickle.UnpicklingError(f"byte order {order!r}")
        return np.dtype(code).newbyteorder(order)


def _array(data: Any, dtype: Any, shape: Any, fortran: Any) -> np.ndarray:
    """An array over ``data``'s bytes, after checking they are exactly what ``shape`` needs."""
    if isinstance(dtype, _Dtype):
        dtype = dtype.resolve()
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("array without a dtype")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise pickle.UnpicklingError(f"array shape {shape!r}")
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"array data of type {type(data).__name__}")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError(
            f"array of shape {shape} with {len(data)} bytes of data (needs "
            f"{math.prod(shape) * dtype.itemsize})"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


class _Array:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``: the real array
    is made from the state that follows (``ndarray.__setstate__``), once it is checked."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("array state")
        shape, dtype, fortran, data = state[-4:]
        self.array = _array(data, dtype, shape, fortran)


class _NdarrayName:
    """What ``numpy.ndarray`` unpickles to: a name ``_reconstruct`` accepts, never callable
    (``ndarray(shape)`` would allocate whatever a file declares)."""


_NDARRAY = _NdarrayName()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Array:
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError(f"array made as {shape!r} (NumPy writes (0,))")
    return _Array()


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _array(data, dtype, shape, order == "F")


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 pickles bytes with protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how Python 3 pickles ``b""`` with protocol 2 (nothing else is allowed)."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


_ALLOWED: dict[tuple[str, str], Any] = {
    **{
        (m, "_reconstruct"): _reconstruct
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent id")


def _check_opcodes(data: bytes, max_opcodes: int) -> None:
    """Walk the opcodes without building anything: bounded count and memo indices."""
    for count, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(data)), 1):
        if count > max_opcodes:
            raise pickle.UnpicklingError(f"more than {max_opcodes} pickle opcodes")
        if op.name in _MEMO_PUTS and int(arg) > max_opcodes:
            raise pickle.UnpicklingError(f"memo index {arg}")


def _resolve(obj: Any, depth: int = 0) -> Any:
    """Replace the stand-ins by arrays and dtypes, in dicts, lists and tuples."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise pickle.UnpicklingError("array without data")
        return obj.array
    if isinstance(obj, _Dtype):
        return obj.resolve()
    if isinstance(obj, _NdarrayName):
        raise pickle.UnpicklingError("numpy.ndarray outside an array")
    if isinstance(obj, (dict, list, tuple)):
        if depth >= _MAX_DEPTH:
            raise pickle.UnpicklingError(f"containers nested deeper than {_MAX_DEPTH}")
        if isinstance(obj, dict):
            return {_resolve(k, depth + 1): _resolve(v, depth + 1) for k, v in obj.items()}
        items = [_resolve(v, depth + 1) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def load_plain_pickle(
    path: Path, max_bytes: int = MAX_PICKLE_BYTES, max_opcodes: int = MAX_OPCODES
) -> Any:
    """Unpickle ``path`` (Python 2 strings as bytes) if it holds only plain data and arrays.

    Raises ``RefusedGlobal`` for a pickle naming any other global (nothing runs),
    ``pickle.UnpicklingError`` or another exception for anything that is not such a pickle,
    and ``ValueError`` for files over ``max_bytes``.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{size} bytes, more than the {max_bytes} a dataset pickle may hold")
    data = path.read_bytes()
    _check_opcodes(data, max_opcodes)
    return _resolve(_PlainUnpickler(io.BytesIO(data), encoding="bytes").load())
