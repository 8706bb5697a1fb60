"""Hostile files for the loaders of ``calm_np.datasets``.

Every damaged, foreign or oversized file is a ``ValueError`` (or an
``OSError``) whose message names the file; a small gzip that inflates to
gigabytes is refused before it is inflated, from the size its header
announces.
"""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc

import numpy as np
import pytest

from calm_np import datasets


def _header(code, shape):
    return struct.pack(f">BBBB{len(shape)}I", 0, 0, code, len(shape), *shape)


def _idx(array, code=0x08):
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[code]
    array = np.asarray(array)
    return _header(code, array.shape) + array.astype(dtype).tobytes()


def _zeros_gzip(header, gib=1):
    """``header`` then ``gib`` GiB of zeros, as about 1 MB of gzip members
    (``gzip`` reads concatenated members as one stream)."""
    member = gzip.compress(bytes(1 << 24), compresslevel=9)  # 16 MiB of zeros
    return gzip.compress(header) + member * (64 * gib)


def _refused_cheaply(path, match):
    """``load_idx(path)`` refused naming ``path``, within 64 MB and 2 s."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match) as info:
            datasets.load_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert time.perf_counter() - start < 2.0
    return str(info.value)


# -- gzip streams read with a bound ------------------------------------------------
def test_hostile_gzip_of_a_gib_of_zeros_refused_before_inflating(tmp_path):
    # the header announces 2 GiB; the ~1 MB file inflates to 1 GiB of zeros:
    # the reader used to inflate all of it (2.1 GB peak) to call it truncated
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(_zeros_gzip(_header(0x08, (2**21, 32, 32))))
    assert path.stat().st_size < 1.1e6
    message = _refused_cheaply(path, "truncated")
    assert "1032:1" in message and "2147483648 bytes" in message


@pytest.mark.parametrize("shape", [(10,), (3, 28, 28), (60000, 28, 28)])
def test_hostile_gzip_bomb_behind_a_small_header_stops_at_the_header(tmp_path, shape):
    # the header announces a little: it is read, and one byte more (not the GiB)
    path = tmp_path / "tail-idx3-ubyte.gz"
    path.write_bytes(_zeros_gzip(_header(0x08, shape)))
    _refused_cheaply(path, "bytes after")


def test_gzip_with_limit_reads_only_the_leading_items(tmp_path):
    path = tmp_path / "lots-idx3-ubyte.gz"
    path.write_bytes(_zeros_gzip(_header(0x08, (2**20, 32, 32))))  # exactly 1 GiB
    tracemalloc.start()
    try:
        images = datasets.load_idx(path, limit=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert images.shape == (5, 32, 32) and not images.any()
    assert peak < 64 * 2**20


def test_hostile_plain_file_announcing_more_than_its_size_reads_nothing(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(_header(0x08, (2**30, 4, 4)) + bytes(100))
    message = _refused_cheaply(path, "truncated")
    assert "holds 116 bytes in all" in message


@pytest.mark.parametrize("code", [0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("compress", [False, True])
def test_multi_byte_values_come_back_native_and_writable(tmp_path, code, compress):
    values = np.arange(-6, 6).reshape(3, 4)
    dtype = {0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    data = _header(code, values.shape) + values.astype(dtype).tobytes()
    path = tmp_path / "values"
    path.write_bytes(gzip.compress(data) if compress else data)
    got = datasets.load_idx(path)
    assert got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, values)


# -- IDX header errors name the file ------------------------------------------------
GOOD = _idx(np.arange(24).reshape(2, 3, 4))
HEADERS = [
    (b"\x01" + GOOD[1:], "not an IDX file"),  # bad magic, first byte
    (GOOD[:1] + b"\x01" + GOOD[2:], "not an IDX file"),  # second byte
    (b"\xff\xff\xff\xff" + GOOD[4:], "not an IDX file"),
    (GOOD[:2] + b"\x00" + GOOD[3:], "unknown data type code 0x00"),
    (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown data type code 0x0a"),
    (GOOD[:2] + b"\xff" + GOOD[3:], "unknown data type code 0xff"),
    (GOOD[:3] + b"\x00", "0 dimensions"),
    (GOOD[:3] + b"\x04" + GOOD[4:], "truncated"),  # one dimension too many
    (GOOD[:3] + b"\x02" + GOOD[4:], "bytes after"),  # one too few
    (GOOD[:3] + b"\xff" + GOOD[4:], "truncated"),  # 255 dims, header cut short
    (GOOD[:5], "truncated: its header stops early"),
    (GOOD[:8], "truncated: its header stops early"),
    (GOOD[:15], "truncated: its header stops early"),
    (GOOD[:16], "truncated"),  # header whole, no data
    (GOOD[:-1], "truncated"),
    (GOOD + b"\x00", "bytes after"),
    (_header(0x08, (2**32 - 1,) * 4), "truncated"),  # 2**128 bytes announced
    (_header(0x0E, (2**31, 2**31)), "truncated"),
    (b"PK\x03\x04" + GOOD, "not an IDX file"),  # a zip
    (b"\x00\x00", "not an IDX file"),
]


@pytest.mark.parametrize("data, match", HEADERS)
@pytest.mark.parametrize("compress", [False, True])
def test_hostile_idx_header_errors_name_the_file(tmp_path, data, match, compress):
    path = tmp_path / "odd-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=match) as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


GZIPS = [
    (lambda z: z[:-4], "damaged gzip"),  # trailer cut
    (lambda z: z[:-8] + b"\x00" * 8, "damaged gzip"),  # CRC and size wrong
    (lambda z: z[:12] + b"\xff" * 8 + z[20:], "damaged gzip"),  # deflate garbage
    (lambda z: z[:2] + b"\x07" + z[3:], "damaged gzip"),  # unknown method
    (lambda z: z + b"garbage", "damaged gzip"),  # not another member
    (lambda z: z[:10], "damaged gzip"),  # header only
]


@pytest.mark.parametrize("mangle, match", GZIPS)
def test_hostile_damaged_gzip_names_the_file(tmp_path, mangle, match):
    path = tmp_path / "damaged-idx3-ubyte.gz"
    path.write_bytes(mangle(gzip.compress(GOOD)))
    with pytest.raises(ValueError, match=match) as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


def test_hostile_idx_path_that_is_a_folder_names_it(tmp_path):
    with pytest.raises(OSError) as info:
        datasets.load_idx(tmp_path)
    assert str(tmp_path) in str(info.value)


# -- MNIST and Fashion-MNIST labels are classes 0..9 -----------------------------
def _write_pair(folder, labels, code=0x08, prefix="train"):
    folder.mkdir(exist_ok=True)
    n = len(labels)
    images = np.zeros((n, 28, 28), np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
    path = folder / f"{prefix}-labels-idx1-ubyte"
    path.write_bytes(_idx(np.asarray(labels), code))
    return path


LABELS = [
    ([0, 1, 10], 0x08, "outside 0..9"),
    ([0, 255], 0x08, "outside 0..9"),
    ([3, -1], 0x09, "outside 0..9"),
    ([3, -128], 0x09, "outside 0..9"),
    ([1000, 2], 0x0B, "outside 0..9"),
    ([2**31 - 1], 0x0C, "outside 0..9"),
    ([0.0, 1.0], 0x0D, "float32 values"),
    ([0.5], 0x0D, "float32 values"),
]


@pytest.mark.parametrize("labels, code, match", LABELS)
@pytest.mark.parametrize("loader", ["mnist", "fashion_mnist"])
def test_hostile_mnist_labels_are_range_checked(tmp_path, labels, code, match, loader):
    path = _write_pair(tmp_path / "data", labels, code)
    load = getattr(datasets, f"load_{loader}")
    with pytest.raises(ValueError, match=match) as info:
        load(tmp_path / "data")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C])
def test_mnist_labels_of_any_integer_type_in_range_load(tmp_path, code):
    _write_pair(tmp_path / "data", list(range(10)), code, prefix="t10k")
    _, labels = datasets.load_mnist(tmp_path / "data", "test")
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(10))


# -- STL-10's fold_indices.txt ------------------------------------------------------
FOLDS = [
    (b"\xff\xfe0\x001\x00", "not a text file"),  # UTF-16
    (b"0 1 \xe9\n", "not a text file"),  # Latin-1
    (b"\x80\x81\x82", "not a text file"),
    ("0 1 \u0663\n".encode(), "not a text file"),  # an Arabic-Indic 3
    (b"\x00\x00\x00\x00", "line 1 is not a list of integers"),
    (b"0 1 2\n1 x 3\n", "line 2 is not a list of integers"),
    (b"0 1.5\n", "line 1 is not a list of integers"),
    (b"0, 1, 2\n", "line 1 is not a list of integers"),
    (b"1e3\n", "line 1 is not a list of integers"),
    (b"99999999999999999999999\n", "line 1 is not a list of integers"),
    (b"0 -1\n", "line 1 holds a negative index"),
    (b"", "holds no folds"),
    (b"\n \n\t\n", "holds no folds"),
    (b"0 1 99\n", "training image 99"),
]


@pytest.mark.parametrize("content, match", FOLDS)
def test_hostile_stl10_fold_file_errors_name_it(tmp_path, content, match):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "train_y.bin").write_bytes(bytes([1, 2, 3, 4]))
    path = folder / "fold_indices.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        datasets.stl10_folds(folder)
    assert str(path) in str(info.value)
