"""Image data sets from local files, and the whitening the paper used.

Loaders read files that are already on disk (nothing is downloaded):

- MNIST and Fashion-MNIST in IDX format, gzip-compressed or not
  (:func:`load_mnist`, :func:`load_fashion_mnist`, :func:`load_idx`);
- STL-10 binary files through a memory map, so the 100 000 unlabeled images
  are streamed rather than loaded (:func:`load_stl10`, :func:`stl10_folds`);
- small real images bundled with scikit-learn (:func:`load_digits_images`,
  :func:`sample_image_crops`).

Every loader returns images in the calm_np layout ``(n, c, H, W)`` (MNIST-like
sets: ``(n, H, W)``, which calm_np reads as ``c = 1``) as host NumPy arrays;
move them to another namespace with its ``asarray``.

Preprocessing is array-API generic and keeps the input's namespace, device
and dtype: :func:`zca_whiten_per_image` (per image and per channel, the
paper's STL-10 preprocessing) and :class:`ZCAWhitening` (dataset-level ZCA as
in Coates, Lee & Ng, 2011).

This module imports neither scikit-learn, matplotlib, torch nor dask at import
time; the functions that need scikit-learn import it when called.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from . import _checks
from ._xp import get_namespace, to_numpy, wide_float

__all__ = [
    "FASHION_MNIST_DIR",
    "STL10Images",
    "ZCAWhitening",
    "load_digits_images",
    "load_fashion_mnist",
    "load_idx",
    "load_mnist",
    "load_stl10",
    "sample_image_crops",
    "stl10_folds",
    "zca_whiten_per_image",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs its files."""

# ---------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------

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


_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _find_idx(folder, stem):
    """``stem`` or its variants (``.gz``; ``-idx`` spelled ``.idx``)."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in (".gz", ""):
            candidate = folder / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _load_idx_pair(data_dir, kind, limit, what, hint):
    if kind not in _MNIST_PREFIX:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    folder = Path(data_dir).expanduser()
    prefix = _MNIST_PREFIX[kind]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist; {hint}")
    paths = [_find_idx(folder, stem) for stem in stems]
    missing = [stem for stem, p in zip(stems, paths, strict=True) if p is None]
    if missing:
        raise FileNotFoundError(
            f"{what} not found: {folder} has no "
            + " or ".join(f"{m}[.gz]" for m in missing)
            + f"; {hint}"
        )
    images = load_idx(paths[0], limit=limit)
    labels = load_idx(paths[1], limit=limit)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(
            f"{paths[0]} and {paths[1]} must hold images (n, H, W) and labels "
            f"(n,), got shapes {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
            f"{labels.shape[0]} labels; the files belong to different sets"
        )
    return images, labels.astype(np.int64)


def load_mnist(data_dir, kind="train", *, limit=None):
    """Load MNIST (or any set in the same IDX layout) from a folder.

    Parameters
    ----------
    data_dir : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
        optionally gzip-compressed (``.gz``).
    kind : {"train", "test"}, default="train"
        Which split to read (``test`` reads the ``t10k-`` files).
    limit : int or None, default=None
        Read only the first ``limit`` images and labels.

    Returns
    -------
    images : ndarray of shape (n_samples, 28, 28), dtype uint8
        Pixel values 0..255; calm_np reads a 3-D batch as one channel.
    labels : ndarray of shape (n_samples,), dtype int64
        Class indices 0..9.

    Raises
    ------
    FileNotFoundError
        If the folder or one of the two files of the split is missing.

    Notes
    -----
    :math:`X \\in \\{0, \\dots, 255\\}^{n \\times 28 \\times 28}`.
    """
    hint = (
        "put the four MNIST IDX files (train-/t10k- images and labels, .gz or "
        "not) there and pass data_dir=<that folder>"
    )
    return _load_idx_pair(data_dir, kind, limit, "MNIST", hint)


def load_fashion_mnist(data_dir=None, kind="train", *, limit=None):
    """Load Fashion-MNIST, by default from the Debian package's folder.

    Parameters
    ----------
    data_dir : str or path-like or None, default=None
        Folder with the four IDX files; ``None`` means
        ``/usr/share/datasets/fashion-mnist`` (``apt-get install
        dataset-fashion-mnist``).
    kind : {"train", "test"}, default="train"
        ``train`` has 60 000 images, ``test`` 10 000.
    limit : int or None, default=None
        Read only the first ``limit`` images and labels.

    Returns
    -------
    images : ndarray of shape (n_samples, 28, 28), dtype uint8
    labels : ndarray of shape (n_samples,), dtype int64
        Class indices 0..9 (T-shirt/top, trouser, pullover, dress, coat,
        sandal, shirt, sneaker, bag, ankle boot).

    Raises
    ------
    FileNotFoundError
        If the folder or a file is missing; the message says what to install.

    Notes
    -----
    Same file layout as :func:`load_mnist`:
    :math:`X \\in \\{0, \\dots, 255\\}^{n \\times 28 \\times 28}`.
    """
    folder = FASHION_MNIST_DIR if data_dir is None else data_dir
    hint = (
        "install it with `apt-get install dataset-fashion-mnist` (files go to "
        f"{FASHION_MNIST_DIR}) or pass data_dir=<folder with the IDX files>"
    )
    return _load_idx_pair(folder, kind, limit, "Fashion-MNIST", hint)


# ---------------------------------------------------------------------------
# STL-10 binary files
# ---------------------------------------------------------------------------

_STL10_SHAPE = (3, 96, 96)
_STL10_BYTES = math.prod(_STL10_SHAPE)
_STL10_SPLITS = ("train", "test", "unlabeled")
_STL10_HINT = (
    "extract stl10_binary.tar.gz (https://cs.stanford.edu/~acoates/stl10/) and "
    "pass data_dir=<the stl10_binary folder>"
)


class STL10Images:
    """STL-10 images read lazily from a memory-mapped binary file.

    Indexing reads only the requested images and returns them as a NumPy
    array in calm_np's ``(n, 3, 96, 96)`` layout. The files store each image
    channel by channel with the two spatial axes swapped (column-major, the
    MATLAB order); the official ``stl10_input.py`` swaps them back and so does
    this class, one batch at a time.

    Parameters
    ----------
    memmap : numpy.memmap of shape (n_samples, 3, 96, 96), dtype uint8
        The file's bytes in file order (``(n, channel, x, y)``).

    Attributes
    ----------
    memmap : numpy.memmap
        The underlying map; nothing is read until indexed.
    shape : tuple of int
        ``(n_samples, 3, 96, 96)``.
    dtype : numpy.dtype
        ``uint8``.
    ndim : int
        4.
    """

    def __init__(self, memmap):
        self.memmap = memmap

    @property
    def shape(self):
        n, c, width, height = self.memmap.shape  # file order: x before y
        return (n, c, height, width)

    @property
    def dtype(self):
        return self.memmap.dtype

    @property
    def ndim(self):
        return 4

    def __len__(self):
        return self.memmap.shape[0]

    def __getitem__(self, key):
        """Images selected along the first axis (int, slice, index array).

        A tuple key indexes the first axis with its first entry and the
        ``(c, H, W)`` axes of the result with the rest.
        """
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        batch = np.ascontiguousarray(np.swapaxes(self.memmap[first], -1, -2))
        if not rest:
            return batch
        if batch.ndim == 3:  # an integer picked one image
            return batch[rest]
        return batch[(slice(None), *rest)]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def batches(self, batch_size, *, start=0, stop=None, transform=None):
        """Consecutive images in batches, as a re-iterable.

        Each iteration reads the file again, batch by batch, so the result can
        be given to an estimator's ``fit``, which reads its data once per EM
        iteration, without loading the split.

        Parameters
        ----------
        batch_size : int
            Images per batch (the last batch may be smaller).
        start, stop : int or None
            Range of images to stream, as in ``range(start, stop)``.
        transform : callable or None, default=None
            Applied to each ``(b, 3, 96, 96)`` uint8 batch, e.g.
            :func:`zca_whiten_per_image`.

        Returns
        -------
        batches : re-iterable of ndarray of shape (b, 3, 96, 96)
            ``len(batches)`` is the number of batches.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {transform!r}")
        start, stop, _ = slice(start, stop).indices(len(self))
        return _Batches(self, batch_size, start, stop, transform)

    def iter_batches(self, batch_size, *, start=0, stop=None, transform=None):
        """Iterator over :meth:`batches` (one pass over the images).

        Yields
        ------
        batch : ndarray of shape (b, 3, 96, 96)
        """
        return iter(
            self.batches(batch_size, start=start, stop=stop, transform=transform)
        )

    def __repr__(self):
        return (
            f"STL10Images({len(self)} images of {self.shape[1:]} uint8, "
            f"memory-mapped from {self.memmap.filename})"
        )


class _Batches:
    """Re-iterable batches of an :class:`STL10Images` (see ``batches``)."""

    def __init__(self, images, batch_size, start, stop, transform):
        self.images, self.batch_size = images, batch_size
        self.start, self.stop, self.transform = start, max(start, stop), transform

    def __len__(self):
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self):
        for i in range(self.start, self.stop, self.batch_size):
            batch = self.images[i : min(i + self.batch_size, self.stop)]
            yield batch if self.transform is None else self.transform(batch)


def _stl10_folder(data_dir):
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"STL-10 folder {folder} does not exist; {_STL10_HINT}")
    return folder


def _stl10_n_images(path):
    size = os.path.getsize(path)
    if size == 0 or size % _STL10_BYTES:
        raise ValueError(
            f"{path} holds {size} bytes, not a whole number of 3x96x96 uint8 "
            f"images ({_STL10_BYTES} bytes each); it is truncated or not an "
            "STL-10 image file"
        )
    return size // _STL10_BYTES


def _stl10_labels(path, n_images):
    labels = np.fromfile(path, dtype=np.uint8)
    if labels.shape[0] != n_images:
        raise ValueError(
            f"{path} holds {labels.shape[0]} labels but the image file holds "
            f"{n_images} images; the files belong to different splits"
        )
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(
            f"{path} holds labels outside 1..10 (min {labels.min()}, max "
            f"{labels.max()}); it is not an STL-10 label file"
        )
    return labels.astype(np.int64) - 1


def load_stl10(data_dir, split="train", *, mmap=True):
    """Load an STL-10 split from the official binary files.

    Parameters
    ----------
    data_dir : str or path-like
        The ``stl10_binary`` folder: ``train_X.bin``, ``train_y.bin``,
        ``test_X.bin``, ``test_y.bin``, ``unlabeled_X.bin``.
    split : {"train", "test", "unlabeled"}, default="train"
        5 000, 8 000 and 100 000 images.
    mmap : bool, default=True
        Map the image file instead of reading it, and return an
        :class:`STL10Images` that reads images when indexed or streamed with
        ``iter_batches``. ``False`` reads the whole split into memory
        (the unlabeled split takes 2.8 GB).

    Returns
    -------
    images : STL10Images or ndarray of shape (n_samples, 3, 96, 96), dtype uint8
        RGB images, rows top to bottom, columns left to right.
    labels : ndarray of shape (n_samples,), dtype int64, or None
        Class indices 0..9 (the files store 1..10); ``None`` for
        ``unlabeled``.

    Raises
    ------
    FileNotFoundError
        If the folder or a file of the split is missing.
    ValueError
        If a file's size or labels do not fit the format.

    Notes
    -----
    Image ``i`` occupies bytes ``[27648 i, 27648 (i+1))`` in channel, column,
    row order: :math:`X[i, c, y, x] = \\text{byte}[27648 i + 9216 c + 96 x + y]`.
    """
    if split not in _STL10_SPLITS:
        raise ValueError(f"split must be one of {_STL10_SPLITS}, got {split!r}")
    folder = _stl10_folder(data_dir)
    image_path = folder / f"{split}_X.bin"
    label_path = None if split == "unlabeled" else folder / f"{split}_y.bin"
    missing = [p.name for p in (image_path, label_path) if p and not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"STL-10 not found: {folder} has no {' or '.join(missing)}; {_STL10_HINT}"
        )
    n_images = _stl10_n_images(image_path)
    labels = None if label_path is None else _stl10_labels(label_path, n_images)
    if mmap:
        raw = np.memmap(
            image_path, dtype=np.uint8, mode="r", shape=(n_images, *_STL10_SHAPE)
        )
        return STL10Images(raw), labels
    raw = np.fromfile(image_path, dtype=np.uint8).reshape(n_images, *_STL10_SHAPE)
    return np.ascontiguousarray(np.swapaxes(raw, -1, -2)), labels


def stl10_folds(data_dir):
    """The ten training folds of the standard STL-10 protocol.

    Each fold lists 1 000 of the 5 000 training images; a model is trained on
    one fold and tested on the whole test set, and the ten accuracies are
    averaged.

    Parameters
    ----------
    data_dir : str or path-like
        The ``stl10_binary`` folder holding ``fold_indices.txt``.

    Returns
    -------
    folds : list of ndarray of dtype int64
        Zero-based indices into the training split, one array per line.

    Raises
    ------
    FileNotFoundError
        If ``fold_indices.txt`` is missing.
    ValueError
        If a line holds something other than non-negative integers, or an
        index is beyond the training split (when ``train_y.bin`` is there).

    Notes
    -----
    One fold per line, indices separated by spaces:
    :math:`\\text{fold}_j \\subset \\{0, \\dots, 4999\\}`.
    """
    folder = _stl10_folder(data_dir)
    path = folder / "fold_indices.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"STL-10 fold file not found: {folder} has no fold_indices.txt (it "
            "ships in stl10_binary.tar.gz next to train_X.bin); without it the "
            "standard 10-fold protocol cannot be followed"
        )
    folds = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fold = np.array([int(tok) for tok in line.split()], dtype=np.int64)
        except ValueError as exc:
            raise ValueError(
                f"{path} line {number} is not a list of integers ({exc})"
            ) from exc
        if fold.min() < 0:
            raise ValueError(f"{path} line {number} holds a negative index")
        folds.append(fold)
    if not folds:
        raise ValueError(f"{path} holds no folds")
    label_path = folder / "train_y.bin"
    if label_path.is_file():
        n_train = os.path.getsize(label_path)
        worst = max(int(f.max()) for f in folds)
        if worst >= n_train:
            raise ValueError(
                f"{path} refers to training image {worst} but {label_path} "
                f"holds only {n_train} labels"
            )
    return folds


# ---------------------------------------------------------------------------
# Small real images bundled with scikit-learn
# ---------------------------------------------------------------------------


def _sklearn_datasets(caller):
    try:
        import sklearn.datasets
    except ImportError as exc:
        raise ImportError(
            f"{caller} reads images bundled with scikit-learn; install it with "
            "`pip install scikit-learn`"
        ) from exc
    return sklearn.datasets


def load_digits_images():
    """scikit-learn's 1 797 handwritten digits as one-channel 8×8 images.

    The data ship inside scikit-learn (no download); this is calm_np's quick
    default data set.

    Returns
    -------
    images : ndarray of shape (1797, 1, 8, 8), dtype float64
        Pixel values scaled from 0..16 to [0, 1].
    labels : ndarray of shape (1797,), dtype int64
        Digits 0..9.

    Notes
    -----
    :math:`X = \\text{counts} / 16 \\in [0, 1]^{n \\times 1 \\times 8 \\times 8}`.
    """
    digits = _sklearn_datasets("load_digits_images").load_digits()
    images = np.asarray(digits.images, dtype=np.float64)[:, None, :, :] / 16.0
    return images, np.asarray(digits.target, dtype=np.int64)


def sample_image_crops(n_crops, size, seed=None):
    """Random square crops of the two photographs bundled with scikit-learn.

    ``china.jpg`` and ``flower.jpg`` (427×640 RGB) from
    :func:`sklearn.datasets.load_sample_images`; each crop picks one of the
    two images and a top-left corner uniformly at random.

    Parameters
    ----------
    n_crops : int
        Number of crops.
    size : int
        Side of each square crop, at most 427.
    seed : int, numpy.random.Generator or None, default=None
        Seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    crops : ndarray of shape (n_crops, 3, size, size), dtype float64
        RGB values in [0, 1].

    Raises
    ------
    ImportError
        If scikit-learn or Pillow (needed to decode the JPEG files) is missing.

    Notes
    -----
    :math:`X_i = I_{j_i}[:, y_i : y_i + s, x_i : x_i + s] / 255`.
    """
    for name, value in (("n_crops", n_crops), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if n_crops < 0:
        raise ValueError(f"n_crops must be non-negative, got {n_crops}")
    datasets = _sklearn_datasets("sample_image_crops")
    try:
        import PIL  # noqa: F401 - load_sample_images decodes JPEGs with Pillow
    except ImportError as exc:
        raise ImportError(
            "sample_image_crops needs Pillow to decode scikit-learn's sample "
            "JPEG images; install it with `pip install pillow`"
        ) from exc
    photos = datasets.load_sample_images().images
    smallest = min(min(p.shape[:2]) for p in photos)
    if not 1 <= size <= smallest:
        raise ValueError(f"size must be between 1 and {smallest}, got {size}")
    rng = np.random.default_rng(seed)
    crops = np.empty((int(n_crops), 3, size, size), dtype=np.float64)
    for i, j in enumerate(rng.integers(len(photos), size=int(n_crops))):
        photo = photos[j]
        y = rng.integers(photo.shape[0] - size + 1)
        x = rng.integers(photo.shape[1] - size + 1)
        crops[i] = np.moveaxis(photo[y : y + size, x : x + size, :], -1, 0)
    crops /= 255.0
    return crops


# ---------------------------------------------------------------------------
# Whitening (array-API generic)
# ---------------------------------------------------------------------------


def _check_eps(eps, positive):
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.floating):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0 or (positive and eps == 0):
        need = "positive" if positive else "non-negative"
        raise ValueError(f"eps must be finite and {need}, got {eps!r}")
    return eps


def _as_float(X, name):
    X = _checks.as_array(X, name)
    xp, device = get_namespace(X)
    dtype = _checks.float_dtype(xp, [(X, name)], device)
    return xp.astype(X, dtype), xp, device, dtype


def zca_whiten_per_image(X, *, eps=1e-8):
    """Whiten each image's channels separately: zero mean and unit variance.

    The paper preprocesses STL-10 with "ZCA whitening per image and channel".
    One plane of one image is a single sample of a 96·96-dimensional vector,
    too few to estimate a covariance between pixels, so we take its pixels as
    samples of one scalar: the ZCA transform of a scalar with variance
    :math:`\\sigma^2` is :math:`(x - m) / \\sqrt{\\sigma^2 + \\epsilon}`, which
    is exactly a per-plane standardization. This matches calm_np's model, in
    which background pixels are :math:`N(0, 1)`. For whitening *between*
    pixels fit a :class:`ZCAWhitening` on patches of the whole data set.

    Parameters
    ----------
    X : array of shape (..., height, width)
        Images, e.g. ``(n_samples, n_channels, height, width)``; each plane
        over the last two axes is whitened on its own. Integer images become
        the namespace's default float.
    eps : float, default=1e-8
        Regularizer added to each plane's variance, in squared pixel units.
        Constant planes become zeros (also with ``eps=0``), never NaN.

    Returns
    -------
    X_white : array of the same shape as X
        On X's namespace and device, with X's floating dtype.

    Notes
    -----
    :math:`\\tilde X_{n,c} = (X_{n,c} - \\bar X_{n,c}) /
    \\sqrt{\\operatorname{var}(X_{n,c}) + \\epsilon}`, statistics over the
    ``H × W`` pixels of the plane (variance with divisor ``H·W``).

    Tested backends: NumPy, array-api-strict (2023.12), PyTorch (CPU).
    """
    eps = _check_eps(eps, positive=False)
    X, xp, _, _ = _as_float(X, "X")
    if X.ndim < 2:
        raise ValueError(
            f"X must have at least 2 dimensions (..., height, width), got shape "
            f"{tuple(X.shape)}"
        )
    axes = (-2, -1)
    mean = xp.mean(X, axis=axes, keepdims=True)
    centered = X - mean
    var = xp.mean(centered * centered, axis=axes, keepdims=True)
    scale = xp.sqrt(var + eps)
    # a constant plane with eps=0 would divide 0 by 0
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    return centered / scale


def _eigh(C, xp, device):
    """Symmetric eigendecomposition on C's namespace (host NumPy fallback)."""
    if hasattr(xp, "linalg"):
        return xp.linalg.eigh(C)
    # A namespace without the linalg extension: the d×d matrix goes to the
    # host and back. It is small (d = c·h·w of a patch or image) and this
    # happens once per fit.
    w, v = np.linalg.eigh(to_numpy(C))
    return (
        xp.asarray(w, dtype=C.dtype, device=device),
        xp.asarray(v, dtype=C.dtype, device=device),
    )


class ZCAWhitening:
    """Dataset-level ZCA whitening (Coates, Lee & Ng, 2011).

    ``fit`` estimates the mean and covariance of the training vectors
    (patches or whole images, flattened); ``transform`` maps
    :math:`x \\mapsto (x - m) W` with the symmetric
    :math:`W = V \\operatorname{diag}((\\lambda + \\epsilon)^{-1/2}) V^T`,
    which decorrelates the features while staying as close as possible to the
    original pixels (unlike PCA whitening), so whitened patches still look
    like patches.

    Parameters
    ----------
    eps : float, default=0.1
        Regularizer added to the eigenvalues, in squared input units;
        Coates et al. use 0.1 on patches normalized to unit variance. Larger
        values whiten less and amplify less noise.

    Attributes
    ----------
    mean_ : array of shape (n_features,)
    components_ : array of shape (n_features, n_features)
        Eigenvectors of the covariance, one per row.
    explained_variance_ : array of shape (n_features,)
        Eigenvalues of the covariance (ascending), clipped at 0.
    whitening_matrix_ : array of shape (n_features, n_features)
        :math:`W`, symmetric.
    n_features_in_ : int
        Number of features, ``prod(feature_shape_)``.
    feature_shape_ : tuple of int
        Shape of one sample as given to ``fit`` (e.g. ``(c, h, w)``).

    Notes
    -----
    The covariance uses the divisor ``n_samples`` and is accumulated in
    float64 where the device has it; the fitted arrays have the input's
    floating dtype, namespace and device. ``xp.linalg.eigh`` is used when the
    namespace has the linalg extension; otherwise the ``d × d`` covariance is
    decomposed by NumPy on the host and the result moved back.

    Tested backends: NumPy, array-api-strict (2023.12, with and without
    linalg), PyTorch (CPU).
    """

    def __init__(self, eps=0.1):
        self.eps = eps

    def _flatten(self, X, name, fitting):
        X, xp, device, dtype = _as_float(X, name)
        if X.ndim < 2:
            raise ValueError(
                f"{name} must have shape (n_samples, n_features) or (n_samples, "
                f"...), got shape {tuple(X.shape)}"
            )
        feature_shape = tuple(X.shape[1:])
        if not fitting and feature_shape != self.feature_shape_:
            raise ValueError(
                f"{name} has samples of shape {feature_shape} but this "
                f"ZCAWhitening was fitted on shape {self.feature_shape_}"
            )
        n_features = math.prod(feature_shape)
        return xp.reshape(X, (X.shape[0], n_features)), xp, device, dtype

    def fit(self, X, y=None):
        """Estimate the mean and the whitening matrix.

        Parameters
        ----------
        X : array of shape (n_samples, n_features) or (n_samples, ...)
            Training vectors; trailing axes (e.g. ``(c, h, w)`` patches) are
            flattened.
        y : ignored

        Returns
        -------
        self : ZCAWhitening
        """
        eps = _check_eps(self.eps, positive=True)
        feature_shape = tuple(_checks.as_array(X, "X").shape[1:])
        X2, xp, device, dtype = self._flatten(X, "X", fitting=True)
        if X2.shape[0] < 1:
            raise ValueError("X must hold at least one sample to fit ZCAWhitening")
        wide = wide_float(xp, device)
        Xw = xp.astype(X2, wide)
        mean = xp.mean(Xw, axis=0)
        centered = Xw - mean
        cov = (centered.T @ centered) / X2.shape[0]
        cov = (cov + cov.T) / 2  # exact symmetry for eigh
        eigvals, eigvecs = _eigh(cov, xp, device)
        eigvals = xp.maximum(eigvals, xp.zeros_like(eigvals))
        whitening = (eigvecs * (1.0 / xp.sqrt(eigvals + eps))) @ eigvecs.T
        self.mean_ = xp.astype(mean, dtype)
        self.components_ = xp.astype(eigvecs.T, dtype)
        self.explained_variance_ = xp.astype(eigvals, dtype)
        self.whitening_matrix_ = xp.astype(whitening, dtype)
        self._fit_eps = eps  # inverse_transform must undo this fit's eps
        self.n_features_in_ = math.prod(feature_shape)
        self.feature_shape_ = feature_shape
        return self

    def _check_fitted(self):
        if not hasattr(self, "whitening_matrix_"):
            raise RuntimeError(
                "this ZCAWhitening is not fitted yet; call fit(X) before "
                "transform or inverse_transform"
            )

    def transform(self, X):
        """Whiten X with the fitted mean and matrix.

        Parameters
        ----------
        X : array of shape (n_samples, *feature_shape_)

        Returns
        -------
        X_white : array of the same shape as X
            On X's namespace and device, with X's floating dtype.
        """
        self._check_fitted()
        X2, xp, _, dtype = self._flatten(X, "X", fitting=False)
        mean = xp.astype(self.mean_, dtype)
        W = xp.astype(self.whitening_matrix_, dtype)
        out = (X2 - mean) @ W
        return xp.reshape(out, (X2.shape[0], *self.feature_shape_))

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)

    def inverse_transform(self, X):
        """Map whitened vectors (or learned kernels) back to input space.

        Parameters
        ----------
        X : array of shape (n_samples, *feature_shape_)

        Returns
        -------
        X_orig : array of the same shape as X

        Notes
        -----
        :math:`x = \\tilde x\\, V \\operatorname{diag}(\\sqrt{\\lambda +
        \\epsilon}) V^T + m`.
        """
        self._check_fitted()
        X2, xp, _, dtype = self._flatten(X, "X", fitting=False)
        V = xp.astype(self.components_, dtype)
        lam = xp.astype(self.explained_variance_, dtype)
        coloring = (V.T * xp.sqrt(lam + self._fit_eps)) @ V
        out = X2 @ coloring + xp.astype(self.mean_, dtype)
        return xp.reshape(out, (X2.shape[0], *self.feature_shape_))
