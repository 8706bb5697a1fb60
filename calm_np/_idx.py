"""The IDX file format of MNIST and Fashion-MNIST: load_idx and save_idx."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

# IDX data type codes (third magic byte); multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate's largest compression ratio (a 258-byte match in 2 bits): a gzip
# file of s bytes holds at most 1032·s bytes, so a header announcing more is
# refused before anything is decompressed (a small gzip of zeros cannot make
# the reader inflate gigabytes only to call the file truncated).
_DEFLATE_RATIO = 1032
# Data is read into one buffer of the announced size, this much at a time
# (small: gzip makes a temporary copy of each piece).
_CHUNK = 1 << 20


def _read_exact(f, count):
    """``count`` bytes of ``f`` (fewer at the end of the file)."""
    parts, got = [], 0
    while got < count:
        part = f.read(min(_CHUNK, count - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_into(f, buffer):
    """Fill ``buffer`` (a writable byte view) from ``f``; the bytes read."""
    got = 0
    while got < len(buffer):
        n = f.readinto(buffer[got : got + _CHUNK])
        if not n:
            break
        got += n
    return got


def load_idx(path, *, limit=None):
    """Read one IDX file (the MNIST format) into a NumPy array.

    Gzip compression is detected from the file's first bytes, not from its
    name. All IDX data types are supported: unsigned/signed bytes, 16- and
    32-bit integers, 32- and 64-bit floats, with any number of dimensions.

    Parameters
    ----------
    path : str or path-like
        The IDX file, e.g. ``train-images-idx3-ubyte.gz``.
    limit : int or None, default=None
        Read only the first ``limit`` items along the first axis (the rest of
        the file is not read, and not checked).

    Returns
    -------
    array : ndarray
        Array of the shape stored in the header, in native byte order.

    Raises
    ------
    ValueError
        If the file is not an IDX file, is truncated, holds extra bytes
        after the data, or is a damaged gzip file; the message names the file.
        A header announcing more data than the file can hold (for gzip,
        1032 times its size, deflate's largest ratio) is refused before any
        data is read, and the data is read into one array of the announced
        size, never more: a small gzip of zeros cannot make it inflate
        gigabytes.

    Notes
    -----
    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian
    32-bit sizes, then the values in C order, big-endian:

    :math:`\\text{bytes} = 4 + 4\\,\\text{ndim} + \\text{itemsize}\\prod_i d_i`.

    Examples
    --------
    >>> import numpy as np
    >>> from calm_np.datasets import load_idx, save_idx
    >>> save_idx("tiny-idx3-ubyte", np.arange(18, dtype=np.uint8).reshape(2, 3, 3))
    >>> load_idx("tiny-idx3-ubyte")[1]
    array([[ 9, 10, 11],
           [12, 13, 14],
           [15, 16, 17]], dtype=uint8)
    """
    path = Path(path)
    limit = _check_limit(limit)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        size = os.fstat(raw.fileno()).st_size
    # the most bytes the file can give: itself, or deflate's ratio times it
    capacity = size * _DEFLATE_RATIO if compressed else size
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            return _read_idx(f, path, limit, capacity, compressed)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"{path} is a damaged gzip file ({exc}); download or copy it again"
        ) from exc
    except OSError as exc:  # a read error: say which file
        if exc.filename is None:
            raise OSError(exc.errno, f"{exc.strerror or exc}", str(path)) from exc
        raise


def save_idx(path, array, *, compress=None):
    """Write ``array`` as one IDX file, the inverse of :func:`load_idx`.

    The IDX data type is the array's: ``uint8``, ``int8``, ``int16``,
    ``int32``, ``float32`` or ``float64`` (written big-endian, as the format
    says); any number of dimensions.  The file is written next to ``path``
    and renamed over it when complete, so a failed write leaves a previous
    file as it was.

    Parameters
    ----------
    path : str or path-like
    array : array_like
        Values of one of the six IDX data types (convert others first, e.g.
        ``images.astype(np.uint8)``).
    compress : bool or None, default=None
        Gzip the file; ``None`` means "when ``path`` ends with ``.gz``".

    Raises
    ------
    TypeError
        If ``array``'s dtype is not an IDX data type.
    ValueError
        If ``array`` is 0-dimensional or a size exceeds the header's 32 bits.

    Examples
    --------
    >>> import numpy as np
    >>> from calm_np.datasets import load_idx, save_idx
    >>> labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    >>> save_idx("labels-idx1-ubyte.gz", labels)  # gzipped: the name says .gz
    >>> load_idx("labels-idx1-ubyte.gz")
    array([3, 1, 4, 1, 5], dtype=uint8)
    """
    from ._write import write_replacing

    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(
            f"array has dtype {array.dtype}, which IDX cannot hold; convert it to "
            "uint8, int8, int16, int32, float32 or float64 first"
        )
    if array.ndim == 0 or max(array.shape) >= 2**32 or array.ndim > 255:
        raise ValueError(
            f"array must have 1 to 255 dimensions, each below 2**32, got shape "
            f"{array.shape}"
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        data = gzip.compress(data, mtime=0)  # the same array, the same bytes
    write_replacing(path, lambda f: f.write(data))


def _read_idx(f, path, limit, capacity, compressed):
    header = _read_exact(f, 4)
    if len(header) < 4 or header[0] != 0 or header[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file (its first bytes are {header!r}, an IDX "
            "file starts with 0x00 0x00); pass an MNIST-format file"
        )
    code, ndim = header[2], header[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file (unknown data type code 0x{code:02x}; "
            "known: " + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES) + ")"
        )
    if ndim < 1:
        raise ValueError(f"{path} is not an IDX file (its header gives 0 dimensions)")
    dims_bytes = _read_exact(f, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(f"{path} is truncated: its header stops early")
    shape = [int(d) for d in np.frombuffer(dims_bytes, dtype=">u4")]
    if limit is not None:
        shape[0] = min(shape[0], limit)
    dtype = _IDX_DTYPES[code]
    count = math.prod(shape) * dtype.itemsize
    if 4 + 4 * ndim + count > capacity:  # refused before any data is read
        holds = (
            f"its {capacity // _DEFLATE_RATIO}-byte gzip stream can hold at most "
            f"{capacity} (deflate compresses at most {_DEFLATE_RATIO}:1)"
            if compressed
            else f"the file holds {capacity} bytes in all"
        )
        raise ValueError(
            f"{path} is truncated: the header announces shape {tuple(shape)} "
            f"({count} bytes of data) but {holds}; download or copy it again"
        )
    array = np.empty(shape, dtype=dtype)  # the announced size, and no more
    got = _read_into(f, memoryview(array.reshape(-1).view(np.uint8)))
    if got < count:
        raise ValueError(
            f"{path} is truncated: the header announces shape {tuple(shape)} "
            f"({count} bytes of data) but the file holds {got}; "
            "download or copy it again"
        )
    if limit is None and f.read(1):
        raise ValueError(
            f"{path} has bytes after the {count} announced by its header "
            f"(shape {tuple(shape)}); it is not a valid IDX file"
        )
    native = dtype.newbyteorder("=")
    if native != dtype:  # big-endian values to native order, in place
        array = array.byteswap(inplace=True).view(native)
    return array


def _check_limit(limit):
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    return int(limit)
