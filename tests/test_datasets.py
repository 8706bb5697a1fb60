"""Loaders on small synthetic files written here, and whitening properties.

No test reads a real data set: each file format is written by the helpers
below straight from its specification (IDX: LeCun's page; STL-10: the
official ``stl10_input.py``), so a loader that misreads the format fails.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
from _helpers import check_array_like
from hypothesis import given
from hypothesis import strategies as st

from calm_np import datasets
from calm_np._xp import array_namespace, to_numpy

# ---------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------

IDX_CODES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def idx_bytes(array, code):
    """The IDX encoding of ``array``: magic, big-endian sizes, big-endian data."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(IDX_CODES[code]).tobytes(order="C")


def write_idx(path, array, code=0x08, compress=False):
    data = idx_bytes(array, code)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def random_values(rng, code, shape):
    dtype = np.dtype(IDX_CODES[code])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@given(
    code=st.sampled_from(sorted(IDX_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    compress=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_load_idx_round_trips_every_dtype(tmp_path, code, shape, compress, seed):
    expected = random_values(np.random.default_rng(seed), code, shape)
    path = write_idx(tmp_path / "data", expected, code, compress)
    got = datasets.load_idx(path)
    assert got.shape == tuple(shape)
    assert got.dtype == expected.dtype.newbyteorder("=")
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    got.flat[:1] = 0  # a writable array, not a view of a bytes buffer


@given(
    code=st.sampled_from(sorted(IDX_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    native=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_save_idx_writes_the_idx_encoding(tmp_path, code, shape, native, seed):
    values = random_values(np.random.default_rng(seed), code, shape)
    if native:  # either byte order in, big-endian out
        values = values.astype(values.dtype.newbyteorder("="))
    plain, packed = tmp_path / "a-idx", tmp_path / "a-idx.gz"
    datasets.save_idx(plain, values)
    datasets.save_idx(packed, values)  # .gz: compressed
    assert plain.read_bytes() == idx_bytes(values, code)
    assert gzip.decompress(packed.read_bytes()) == idx_bytes(values, code)
    np.testing.assert_array_equal(datasets.load_idx(packed), values)
    datasets.save_idx(plain, values, compress=True)  # the flag wins over the name
    assert gzip.decompress(plain.read_bytes()) == idx_bytes(values, code)


@pytest.mark.parametrize(
    "values, error, match",
    [
        (np.zeros(3, np.int64), TypeError, "dtype int64.*uint8"),
        (np.zeros(3, np.uint16), TypeError, "uint16"),
        (np.array(["a"]), TypeError, "IDX cannot hold"),
        (np.uint8(3), ValueError, "1 to 255 dimensions"),
    ],
)
def test_save_idx_refuses_what_idx_cannot_hold(tmp_path, values, error, match):
    path = tmp_path / "kept-idx"
    path.write_bytes(b"previous")
    with pytest.raises(error, match=match):
        datasets.save_idx(path, values)
    assert path.read_bytes() == b"previous"  # nothing written


def test_load_idx_detects_gzip_from_content_not_name(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    misnamed_gz = write_idx(tmp_path / "images-idx3-ubyte", images, compress=True)
    misnamed_raw = write_idx(tmp_path / "images-idx3-ubyte.gz", images)
    np.testing.assert_array_equal(datasets.load_idx(misnamed_gz), images)
    np.testing.assert_array_equal(datasets.load_idx(misnamed_raw), images)


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_limit_reads_leading_items(tmp_path, compress):
    values = np.arange(5 * 2 * 2, dtype=">i4").reshape(5, 2, 2) - 7
    path = write_idx(tmp_path / "f", values, 0x0C, compress)
    np.testing.assert_array_equal(datasets.load_idx(path, limit=3), values[:3])
    np.testing.assert_array_equal(datasets.load_idx(path, limit=99), values)
    assert datasets.load_idx(path, limit=0).shape == (0, 2, 2)


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_load_idx_rejects_bad_limit(tmp_path, limit):
    path = write_idx(tmp_path / "f", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="limit"):
        datasets.load_idx(path, limit=limit)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: d[:-1], "truncated"),  # one data byte missing
        (lambda d: d[:6], "truncated"),  # header stops inside the sizes
        (lambda d: d[:3], "not an IDX file"),
        (lambda d: d + b"\x00", "bytes after"),
        (lambda d: b"\x89PNG\r\n\x1a\n" + d, "not an IDX file"),
        (lambda d: b"hello, world\n", "not an IDX file"),
        (lambda d: d[:2] + b"\x07" + d[3:], "unknown data type code 0x07"),
        (lambda d: d[:3] + b"\x00" + d[4:], "0 dimensions"),
        (lambda d: b"", "not an IDX file"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_refuses_truncated_and_foreign_files(
    tmp_path, mangle, message, compress
):
    data = mangle(idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08))
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=message) as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_refuses_damaged_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8) % 7, 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged gzip") as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_huge_header_fails_as_truncated(tmp_path):
    # a header claiming 2**32-1 items per axis must not be allocated up front
    path = tmp_path / "huge"
    path.write_bytes(struct.pack(">BBBBIII", 0, 0, 0x0E, 3, *(2**32 - 1,) * 3))
    with pytest.raises(ValueError, match="truncated"):
        datasets.load_idx(path)


def write_mnist(folder, n_train=5, n_test=3, compress=True, seed=0, dotted=False):
    """Four MNIST files of random 28x28 images; returns what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        sep = "." if dotted else "-"
        suffix = ".gz" if compress else ""
        write_idx(
            folder / f"{prefix}-images{sep}idx3-ubyte{suffix}", images, 0x08, compress
        )
        write_idx(
            folder / f"{prefix}-labels{sep}idx1-ubyte{suffix}", labels, 0x08, compress
        )
        written[kind] = (images, labels)
    return written


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("kind", ["train", "test"])
def test_load_mnist_reads_each_split(tmp_path, compress, dotted, kind):
    written = write_mnist(tmp_path, compress=compress, dotted=dotted)
    images, labels = datasets.load_mnist(tmp_path, kind)
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, written[kind][0])
    np.testing.assert_array_equal(labels, written[kind][1])


def test_load_mnist_limit(tmp_path):
    written = write_mnist(tmp_path, n_train=6)
    images, labels = datasets.load_mnist(str(tmp_path), limit=4)
    np.testing.assert_array_equal(images, written["train"][0][:4])
    np.testing.assert_array_equal(labels, written["train"][1][:4])


def test_load_mnist_missing_folder_and_files_name_them(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        datasets.load_mnist(missing)
    assert "\n" not in str(info.value)
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path, "test")
    datasets.load_mnist(tmp_path, "train")  # the other split is still fine


def test_load_mnist_refuses_mismatched_files(tmp_path):
    write_mnist(tmp_path, n_train=5)
    write_idx(
        tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), 0x08, True
    )
    with pytest.raises(ValueError, match="5 images .* 4 labels"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((5, 2), np.uint8))
    with pytest.raises(ValueError, match="shapes"):
        datasets.load_mnist(tmp_path)


def test_load_mnist_rejects_unknown_kind(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        datasets.load_mnist(tmp_path, "validation")


def test_load_fashion_mnist_default_folder_and_install_hint(tmp_path, monkeypatch):
    written = write_mnist(tmp_path / "fm")
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "fm"))
    images, labels = datasets.load_fashion_mnist(kind="test")
    np.testing.assert_array_equal(images, written["test"][0])
    np.testing.assert_array_equal(labels, written["test"][1])
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_fashion_mnist()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "absent") in message and "\n" not in message


# ---------------------------------------------------------------------------
# STL-10
# ---------------------------------------------------------------------------


def stl10_pixels(n, seed):
    """Images (n, 3, 96, 96) in display orientation, asymmetric in y and x."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 200, size=(n, 3, 96, 96), dtype=np.uint8)
    images[:, :, 0, :] = 255  # the top row is white: orientation is visible
    return images


def write_stl10_images(path, images):
    # official layout: per image, channel by channel, column-major (x, then y)
    path.write_bytes(np.ascontiguousarray(np.swapaxes(images, 2, 3)).tobytes())


def official_read(path):
    """``read_all_images`` from STL-10's stl10_input.py: (n, y, x, channel)."""
    everything = np.fromfile(path, dtype=np.uint8)
    return np.transpose(np.reshape(everything, (-1, 3, 96, 96)), (0, 3, 2, 1))


@pytest.fixture
def stl10_dir(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    data = {}
    for split, n in (("train", 4), ("test", 3), ("unlabeled", 5)):
        images = stl10_pixels(n, seed=n)
        write_stl10_images(folder / f"{split}_X.bin", images)
        labels = None
        if split != "unlabeled":
            labels = (np.arange(n) * 3 % 10 + 1).astype(np.uint8)  # 1..10
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        data[split] = (images, labels)
    return folder, data


@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_load_stl10_orientation_and_labels(stl10_dir, split):
    folder, data = stl10_dir
    images, labels = datasets.load_stl10(folder, split)
    expected_images, expected_labels = data[split]
    assert images.shape == expected_images.shape and images.dtype == np.uint8
    batch = images[:]
    np.testing.assert_array_equal(batch, expected_images)
    assert np.all(batch[:, :, 0, :] == 255)  # top row, not left column
    # same pixels as the official reader, in calm_np's (n, c, H, W) layout
    official = official_read(folder / f"{split}_X.bin")
    np.testing.assert_array_equal(batch, np.transpose(official, (0, 3, 1, 2)))
    if split == "unlabeled":
        assert labels is None
    else:
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, expected_labels.astype(np.int64) - 1)
        assert labels.min() >= 0 and labels.max() <= 9


def test_load_stl10_is_memory_mapped_not_loaded(stl10_dir):
    folder, data = stl10_dir
    images, _ = datasets.load_stl10(folder, "unlabeled")
    assert isinstance(images, datasets.STL10Images)
    assert isinstance(images.memmap, np.memmap)
    assert images.memmap.mode == "r"
    assert len(images) == 5 and images.ndim == 4
    assert images.shape == (5, 3, 96, 96) and images.dtype == np.uint8
    expected = data["unlabeled"][0]
    np.testing.assert_array_equal(images[2], expected[2])
    np.testing.assert_array_equal(images[1:4], expected[1:4])
    np.testing.assert_array_equal(images[np.array([4, 0])], expected[[4, 0]])
    np.testing.assert_array_equal(images[3, 1], expected[3, 1])
    np.testing.assert_array_equal(images[1:3, 2, :5], expected[1:3, 2, :5])
    np.testing.assert_array_equal(np.asarray(images), expected)
    assert images[:2].flags.c_contiguous


@pytest.mark.parametrize("batch_size", [1, 2, 5, 7])
def test_stl10_iter_batches_covers_every_image_once(stl10_dir, batch_size):
    folder, data = stl10_dir
    images, _ = datasets.load_stl10(folder, "unlabeled")
    batches = list(images.iter_batches(batch_size))
    assert all(1 <= len(b) <= batch_size for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), data["unlabeled"][0])
    part = np.concatenate(list(images.iter_batches(batch_size, start=1, stop=4)))
    np.testing.assert_array_equal(part, data["unlabeled"][0][1:4])
    with pytest.raises(ValueError, match="batch_size"):
        images.iter_batches(0)


def test_stl10_batches_are_reiterable_and_transformed(stl10_dir):
    folder, data = stl10_dir
    images, _ = datasets.load_stl10(folder, "unlabeled")
    batches = images.batches(2, transform=datasets.zca_whiten_per_image)
    assert len(batches) == 3
    first = np.concatenate(list(batches))
    second = np.concatenate(list(batches))  # a second pass reads the file again
    np.testing.assert_array_equal(first, second)
    expected = datasets.zca_whiten_per_image(data["unlabeled"][0])
    np.testing.assert_allclose(first, expected, atol=1e-12)
    assert len(images.batches(2, start=4, stop=1)) == 0
    with pytest.raises(TypeError, match="transform"):
        images.batches(2, transform="zca")


def test_load_stl10_without_mmap_matches(stl10_dir):
    folder, data = stl10_dir
    images, labels = datasets.load_stl10(folder, "train", mmap=False)
    assert type(images) is np.ndarray and images.flags.c_contiguous
    np.testing.assert_array_equal(images, data["train"][0])


def test_load_stl10_refuses_bad_files(stl10_dir):
    folder, _ = stl10_dir
    with pytest.raises(ValueError, match="split"):
        datasets.load_stl10(folder, "validation")
    (folder / "test_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(ValueError, match="3 images"):
        datasets.load_stl10(folder, "test")
    (folder / "test_y.bin").write_bytes(bytes([1, 0, 11]))
    with pytest.raises(ValueError, match="1..10"):
        datasets.load_stl10(folder, "test")
    (folder / "train_X.bin").write_bytes(b"\x00" * (96 * 96 * 3 + 5))
    with pytest.raises(ValueError, match="train_X.bin"):
        datasets.load_stl10(folder, "train")
    (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(FileNotFoundError, match="unlabeled_X.bin"):
        datasets.load_stl10(folder, "unlabeled")
    with pytest.raises(FileNotFoundError, match="stl10_binary.tar.gz") as info:
        datasets.load_stl10(folder / "missing")
    assert "\n" not in str(info.value)


def test_stl10_folds_parse_official_format(stl10_dir):
    folder, _ = stl10_dir
    rng = np.random.default_rng(0)
    folds = [rng.choice(4, size=3, replace=False) for _ in range(10)]
    # the official file ends each line with a space
    text = "".join(" ".join(map(str, f)) + " \n" for f in folds)
    (folder / "fold_indices.txt").write_text(text)
    got = datasets.stl10_folds(folder)
    assert len(got) == 10
    for g, f in zip(got, folds, strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, f)


def test_stl10_folds_errors(stl10_dir):
    folder, _ = stl10_dir
    with pytest.raises(FileNotFoundError, match="fold_indices.txt"):
        datasets.stl10_folds(folder)
    (folder / "fold_indices.txt").write_text("0 1 2\n1 x 3\n")
    with pytest.raises(ValueError, match="line 2"):
        datasets.stl10_folds(folder)
    (folder / "fold_indices.txt").write_text("0 1 4\n")  # train has 4 images
    with pytest.raises(ValueError, match="training image 4"):
        datasets.stl10_folds(folder)
    (folder / "fold_indices.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no folds"):
        datasets.stl10_folds(folder)


# ---------------------------------------------------------------------------
# Bundled images
# ---------------------------------------------------------------------------


def test_load_digits_images_shapes_and_scale():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images, labels = datasets.load_digits_images()
    digits = sklearn_datasets.load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float64
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(images[:, 0] * 16, digits.images)
    assert set(np.unique(labels)) == set(range(10))


def test_sample_image_crops_come_from_the_photos():
    pytest.importorskip("PIL")
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    crops = datasets.sample_image_crops(3, 5, seed=1)
    assert crops.shape == (3, 3, 5, 5) and crops.dtype == np.float64
    assert crops.min() >= 0.0 and crops.max() <= 1.0
    photos = sklearn_datasets.load_sample_images().images
    for crop in crops:
        patch = np.moveaxis(np.rint(crop * 255).astype(np.uint8), 0, -1)
        found = False
        for photo in photos:
            windows = np.lib.stride_tricks.sliding_window_view(photo, (5, 5, 3))
            found |= bool(np.all(windows == patch, axis=(-3, -2, -1)).any())
        assert found


def test_sample_image_crops_seeded():
    pytest.importorskip("PIL")
    pytest.importorskip("sklearn")
    a = datasets.sample_image_crops(4, 8, seed=3)
    np.testing.assert_array_equal(a, datasets.sample_image_crops(4, 8, seed=3))
    assert not np.array_equal(a, datasets.sample_image_crops(4, 8, seed=4))
    assert datasets.sample_image_crops(0, 8, seed=0).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="size"):
        datasets.sample_image_crops(1, 428)
    with pytest.raises(ValueError, match="n_crops"):
        datasets.sample_image_crops(-1, 8)


def test_sample_image_crops_without_pillow_says_what_to_install(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    with pytest.raises(ImportError, match="pip install pillow"):
        datasets.sample_image_crops(1, 8)


def test_datasets_import_is_light():
    code = (
        "import sys, calm_np.datasets\n"
        "heavy = [m for m in ('sklearn', 'matplotlib', 'torch', 'dask') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# Whitening (array-API generic)
# ---------------------------------------------------------------------------


def plane_stats(X):
    X = to_numpy(X).astype(np.float64)
    return X.mean(axis=(-2, -1)), X.var(axis=(-2, -1))


def test_zca_whiten_per_image_standardizes_each_plane(backend, dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 3, 6, 5))
    X = X * rng.uniform(0.1, 50, size=(4, 3, 1, 1)) + rng.uniform(-9, 9, (4, 3, 1, 1))
    Xb = backend.asarray(X, dtype)
    out = datasets.zca_whiten_per_image(Xb, eps=0.0)
    check_array_like(out, backend, Xb, dtype)
    assert tuple(out.shape) == X.shape
    mean, var = plane_stats(out)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(mean, 0.0, atol=tol)
    np.testing.assert_allclose(var, 1.0, rtol=tol * 10)


@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(2, 6)),
    seed=st.integers(0, 2**32 - 1),
)
def test_zca_whiten_per_image_ignores_plane_offset_and_scale(backend, shape, seed):
    rng = np.random.default_rng(seed)
    n, c, side = shape
    X = rng.standard_normal((n, c, side, side + 1))
    scale = rng.uniform(0.5, 20, size=(n, c, 1, 1))
    offset = rng.uniform(-100, 100, size=(n, c, 1, 1))
    a = datasets.zca_whiten_per_image(backend.asarray(X, "float64"), eps=0.0)
    b = datasets.zca_whiten_per_image(backend.asarray(X * scale + offset, "float64"))
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


def test_zca_whiten_per_image_eps_shrinks_variance(backend):
    rng = np.random.default_rng(1)
    X = 3.0 * rng.standard_normal((2, 1, 8, 8))
    eps = 4.0
    out = datasets.zca_whiten_per_image(backend.asarray(X, "float64"), eps=eps)
    _, var_in = plane_stats(X)
    _, var_out = plane_stats(out)
    np.testing.assert_allclose(var_out, var_in / (var_in + eps), rtol=1e-10)


def test_zca_whiten_per_image_constant_planes_and_integers(backend):
    X = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    X[1, 2] = np.arange(16).reshape(4, 4)
    X[0, 1] = 7
    Xb = backend.asarray(X)
    out = datasets.zca_whiten_per_image(Xb, eps=0.0)
    xp = backend.xp
    assert xp.isdtype(out.dtype, "real floating")
    out = to_numpy(out)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], 0.0)
    assert abs(out[1, 2].var() - 1) < 1e-5
    # 2-D: one plane; 1-D is refused
    flat = datasets.zca_whiten_per_image(backend.asarray(X[1, 2], "float64"))
    np.testing.assert_allclose(to_numpy(flat), out[1, 2], atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        datasets.zca_whiten_per_image(backend.asarray(np.ones(4), "float64"))
    with pytest.raises(ValueError, match="eps"):
        datasets.zca_whiten_per_image(Xb, eps=-1.0)


def correlated(seed, n, d):
    """n samples of d features with covariance eigenvalues in [0.25, 9]."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = Q * rng.uniform(0.5, 3.0, size=d)
    return rng.standard_normal((n, d)) @ A.T + rng.uniform(-5, 5, size=d)


def test_zca_whitening_gives_identity_covariance(backend, dtype):
    X = correlated(0, 400, 6)
    Xb = backend.asarray(X, dtype)
    zca = datasets.ZCAWhitening(eps=1e-10).fit(Xb)
    out = zca.transform(Xb)
    check_array_like(out, backend, Xb, dtype)
    for name in ("mean_", "components_", "explained_variance_", "whitening_matrix_"):
        check_array_like(getattr(zca, name), backend, Xb, dtype)
    tol = 2e-4 if dtype == "float32" else 1e-8  # float32: 6e-8 x condition 36
    white = to_numpy(out).astype(np.float64)
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=tol)
    np.testing.assert_allclose(
        np.cov(white, rowvar=False, bias=True), np.eye(6), atol=tol
    )
    W = to_numpy(zca.whitening_matrix_)
    np.testing.assert_allclose(W, W.T, atol=tol)  # ZCA, not PCA, whitening


@given(n_features=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_zca_whitening_identity_covariance_any_shape(n_features, seed):
    X = correlated(seed, 20 * n_features + 5, n_features)
    white = datasets.ZCAWhitening(eps=1e-12).fit_transform(X)
    cov = np.cov(white, rowvar=False, bias=True).reshape(n_features, n_features)
    np.testing.assert_allclose(cov, np.eye(n_features), atol=1e-8)


def test_zca_whitening_matches_numpy_eigen_formula():
    X = correlated(3, 50, 5)
    eps = 2.0  # large, so shrinkage λ/(λ+eps) is visible
    white = datasets.ZCAWhitening(eps=eps).fit_transform(X)
    lam, V = np.linalg.eigh(np.cov(X, rowvar=False, bias=True))
    expected = (V * (lam / (lam + eps))) @ V.T
    np.testing.assert_allclose(
        np.cov(white, rowvar=False, bias=True), expected, atol=1e-10
    )


def test_zca_whitening_images_keep_shape_and_invert(backend):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 2, 3, 2)) @ rng.standard_normal((2, 2))
    Xb = backend.asarray(X, "float64")
    zca = datasets.ZCAWhitening(eps=1e-3).fit(Xb)
    assert zca.feature_shape_ == (2, 3, 2) and zca.n_features_in_ == 12
    out = zca.transform(Xb)
    assert tuple(out.shape) == X.shape
    np.testing.assert_allclose(to_numpy(zca.inverse_transform(out)), X, atol=1e-9)
    cov = np.cov(to_numpy(out).reshape(300, 12), rowvar=False, bias=True)
    assert np.all(np.diag(cov) <= 1.0 + 1e-9)
    with pytest.raises(ValueError, match="fitted on shape"):
        zca.transform(backend.asarray(X[:, 0], "float64"))


def test_zca_whitening_errors():
    X = correlated(0, 10, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        datasets.ZCAWhitening().transform(X)
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            datasets.ZCAWhitening(eps=eps).fit(X)
    with pytest.raises(ValueError, match="n_samples"):
        datasets.ZCAWhitening().fit(np.ones(3))
    with pytest.raises(ValueError, match="at least one sample"):
        datasets.ZCAWhitening().fit(np.ones((0, 3)))


def test_whitening_without_linalg_and_on_a_second_device():
    strict = pytest.importorskip("array_api_strict")
    X = correlated(5, 200, 4)
    expected = datasets.ZCAWhitening(eps=1e-6).fit_transform(X)
    images = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    with strict.ArrayAPIStrictFlags(api_version="2023.12", enabled_extensions=()):
        assert not hasattr(strict, "linalg")
        device = strict.Device("device1")
        Xs = strict.asarray(X, device=device)
        out = datasets.ZCAWhitening(eps=1e-6).fit_transform(Xs)
        assert array_namespace(out) is array_namespace(Xs)
        assert out.device == device
        np.testing.assert_allclose(to_numpy(out), expected, atol=1e-10)
        per_image = datasets.zca_whiten_per_image(strict.asarray(images, device=device))
        assert per_image.device == device
