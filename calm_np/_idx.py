"""The IDX file format of MNIST and Fashion-MNIST (see :func:`load_idx`)."""

from __future__ import annotations

import gzip
import math
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
# Read in chunks so a damaged header claiming petabytes fails as "truncated"
# instead of trying to allocate the claimed size up front.
_CHUNK = 1 << 24


def _read_exact(f, count):
    parts, got = [], 0
    while got < count:
        part = f.read(min(_CHUNK, count - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


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

    Notes
    -----
    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian
    32-bit sizes, then the values in C order, big-endian:

    :math:`\\text{bytes} = 4 + 4\\,\\text{ndim} + \\text{itemsize}\\prod_i d_i`.

    Examples
    --------
    >>> import gzip
    >>> from pathlib import Path
    >>> import numpy as np
    >>> def write_idx(path, array):  # the IDX header: 0, 0, type 8 (ubyte), ndim
    ...     shape = np.array(array.shape, ">u4").tobytes()
    ...     header = bytes([0, 0, 8, array.ndim]) + shape
    ...     Path(path).write_bytes(header + array.astype(np.uint8).tobytes())
    >>> from calm_np.datasets import load_idx
    >>> write_idx("tiny-idx3-ubyte", np.arange(18).reshape(2, 3, 3))
    >>> load_idx("tiny-idx3-ubyte")[1]
    array([[ 9, 10, 11],
           [12, 13, 14],
           [15, 16, 17]], dtype=uint8)
    """
    path = Path(path)
    limit = _check_limit(limit)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            return _read_idx(f, path, limit)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"{path} is a damaged gzip file ({exc}); download or copy it again"
        ) from exc


def _read_idx(f, path, limit):
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
    data = _read_exact(f, count)
    if len(data) < count:
        raise ValueError(
            f"{path} is truncated: the header announces shape {tuple(shape)} "
            f"({count} bytes of data) but the file holds {len(data)}; "
            "download or copy it again"
        )
    if limit is None and f.read(1):
        raise ValueError(
            f"{path} has bytes after the {count} announced by its header "
            f"(shape {tuple(shape)}); it is not a valid IDX file"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native order, writable copy


def _check_limit(limit):
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    return int(limit)
