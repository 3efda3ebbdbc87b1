"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, the dimensions, then the data, all big-endian::

    0x00 0x00 <dtype code> <ndim>      magic
    <dim 0> ... <dim ndim-1>           one big-endian uint32 each
    <data>                             prod(dims) items, row-major, big-endian

The dtype codes are 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32 and
0x0E float64. Files may be gzipped; :func:`read_idx` detects that from the gzip magic bytes,
not from the file name.
"""

from __future__ import annotations

import gzip as _gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype.
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# numpy kind + itemsize -> IDX dtype code.
_KEY_TO_CODE: dict[tuple[str, int], int] = {
    (dtype.kind, dtype.itemsize): code for code, dtype in _CODE_TO_DTYPE.items()
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not, into a numpy array.

    Args:
        path: the file to read. Gzip compression is detected from the first two bytes.

    Returns:
        An array with the shape stored in the header and the file's dtype in native byte
        order (``uint8`` for MNIST-style images and labels).

    Raises:
        ValueError: naming the file, when the gzip stream is corrupt, the magic number is
            wrong, the dtype code is unknown, or the data is shorter or longer than the
            header promises.

    Example:
        >>> import tempfile, numpy as np
        >>> path = tempfile.mkdtemp() + "/labels-idx1-ubyte.gz"
        >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8), gzip=True)
        >>> read_idx(path)
        array([3, 1, 4], dtype=uint8)
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = _gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{os.fspath(path)!r}: corrupt gzip stream ({e})") from e
    return _parse_idx(raw, os.fspath(path))


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; ``name`` is used in error messages."""
    if len(raw) < 4:
        raise ValueError(f"{name!r}: {len(raw)} bytes, too short for the 4-byte IDX magic number")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{name!r}: bad IDX magic number {raw[:4].hex()}; expected two zero bytes, "
            "a dtype code and a dimension count"
        )
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
        raise ValueError(f"{name!r}: unknown IDX dtype code 0x{code:02X}; known codes: {known}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{name!r}: truncated header: {ndim} dimensions need {header_len} bytes, "
            f"file has {len(raw)}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual < expected:
        raise ValueError(
            f"{name!r}: truncated data: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"file has {actual}"
        )
    if actual > expected:
        raise ValueError(
            f"{name!r}: {actual - expected} trailing bytes after the data of shape {shape} "
            f"({expected} bytes expected)"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order, and a writable copy that owns its memory.
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, gzip: bool = False) -> None:
    """Write an array as an IDX file.

    Args:
        path: the file to write (overwritten if present).
        array: an array of dtype ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or
            ``float64`` with at most 255 dimensions, each below 2**32.
        gzip: compress the file with gzip.

    Raises:
        TypeError: when the dtype has no IDX code.
        ValueError: when the array has too many dimensions or a dimension is too large.

    Example:
        >>> import tempfile, numpy as np
        >>> path = tempfile.mkdtemp() + "/images-idx3-ubyte"
        >>> write_idx(path, np.zeros((2, 3, 3), dtype=np.uint8))
        >>> read_idx(path).shape
        (2, 3, 3)
    """
    array = np.asarray(array)
    code = _KEY_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise TypeError(
            f"array dtype {array.dtype} has no IDX code; use uint8, int8, int16, int32, "
            "float32 or float64"
        )
    if array.ndim > 255:
        raise ValueError(f"array has {array.ndim} dimensions; IDX allows at most 255")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"array shape {array.shape} has a dimension of 2**32 or more")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    raw = header + body
    if gzip:
        raw = _gzip.compress(raw)
    with open(path, "wb") as f:
        f.write(raw)
