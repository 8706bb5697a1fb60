"""Image data sets from local files: the loaders.

Loaders read files that are already on disk (nothing is downloaded):

- MNIST and Fashion-MNIST in IDX format, gzip-compressed or not
  (:func:`load_mnist`, :func:`load_fashion_mnist`, :func:`load_idx`,
  :func:`save_idx`);
- STL-10 binary files through a memory map, so the 100 000 unlabeled images
  are streamed rather than loaded (:func:`load_stl10`, :func:`stl10_folds`);
- small real images bundled with scikit-learn (:func:`load_digits_images`,
  :func:`sample_image_crops`);
- your own PNG/JPEG files, one sub-folder per class
  (:func:`load_image_folder`; Pillow, ``pip install "calm_np[images]"``).

Every loader returns images in the calm_np layout ``(n, c, H, W)`` (MNIST-like
sets: ``(n, H, W)``, which calm_np reads as ``c = 1``) as host NumPy arrays;
move them to another namespace with its ``asarray``.

The whitening the paper used lives in :mod:`calm_np.preprocessing`;
:func:`zca_whiten_per_image` and :class:`ZCAWhitening` stay importable from
here as aliases.

This module imports neither scikit-learn, matplotlib, torch nor dask at import
time; the functions that need scikit-learn import it when called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._folder import (
    IMAGE_EXTENSIONS,
    image_folder_files,
    load_image_folder,
    read_images,
)
from ._idx import load_idx, save_idx
from .preprocessing import ZCAWhitening, zca_whiten_per_image

__all__ = [
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "STL10Images",
    "ZCAWhitening",
    "load_digits_images",
    "image_folder_files",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "load_mnist",
    "load_stl10",
    "read_images",
    "sample_image_crops",
    "save_idx",
    "stl10_folds",
    "zca_whiten_per_image",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs its files."""

# ---------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------

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
    return images, _mnist_labels(labels, paths[1])


def _mnist_labels(labels, path):
    """The labels of an MNIST-format file as int64, each a class 0..9."""
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path} holds {labels.dtype} values, but MNIST labels are integers "
            "0..9; it is not an MNIST label file"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{path} holds labels outside 0..9 (min {labels.min()}, max "
            f"{labels.max()}); it is not an MNIST label file"
        )
    return labels.astype(np.int64)


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
    ValueError
        If a file is not an IDX file or is truncated (see :func:`load_idx`),
        the two files disagree, or a label is outside 0..9; the message names
        the file.

    Notes
    -----
    :math:`X \\in \\{0, \\dots, 255\\}^{n \\times 28 \\times 28}`.

    Examples
    --------
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from calm_np.datasets import save_idx
    >>> def write_split(folder, prefix, n):
    ...     Path(folder).mkdir(exist_ok=True)
    ...     images = np.random.default_rng(0).integers(0, 256, (n, 28, 28))
    ...     save_idx(f"{folder}/{prefix}-images-idx3-ubyte", images.astype(np.uint8))
    ...     labels = (np.arange(n) % 10).astype(np.uint8)
    ...     save_idx(f"{folder}/{prefix}-labels-idx1-ubyte", labels)
    >>> from calm_np.datasets import load_mnist
    >>> write_split("mnist", "train", 12)  # a tiny stand-in for MNIST's files
    >>> images, labels = load_mnist("mnist", "train", limit=5)
    >>> images.shape, images.dtype, labels
    ((5, 28, 28), dtype('uint8'), array([0, 1, 2, 3, 4]))
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
    ValueError
        As for :func:`load_mnist`, naming the file.

    Notes
    -----
    Same file layout as :func:`load_mnist`:
    :math:`X \\in \\{0, \\dots, 255\\}^{n \\times 28 \\times 28}`.

    Examples
    --------
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from calm_np.datasets import save_idx
    >>> def write_split(folder, prefix, n):
    ...     Path(folder).mkdir(exist_ok=True)
    ...     images = np.random.default_rng(0).integers(0, 256, (n, 28, 28))
    ...     save_idx(f"{folder}/{prefix}-images-idx3-ubyte", images.astype(np.uint8))
    ...     labels = (np.arange(n) % 10).astype(np.uint8)
    ...     save_idx(f"{folder}/{prefix}-labels-idx1-ubyte", labels)
    >>> from calm_np.datasets import load_fashion_mnist
    >>> write_split("fashion", "t10k", 8)  # a tiny stand-in; the default folder
    >>> images, labels = load_fashion_mnist("fashion", "test")  # is FASHION_MNIST_DIR
    >>> images.shape, labels.shape
    ((8, 28, 28), (8,))
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

    Examples
    --------
    >>> from pathlib import Path
    >>> import numpy as np
    >>> folder = Path("stl10_binary")
    >>> folder.mkdir(exist_ok=True)  # a tiny stand-in for the STL-10 binary files
    >>> np.zeros((3, 3, 96, 96), np.uint8).tofile(folder / "train_X.bin")
    >>> np.array([1, 2, 10], np.uint8).tofile(folder / "train_y.bin")
    >>> from calm_np.datasets import load_stl10
    >>> images, _ = load_stl10(folder, "train")
    >>> type(images).__name__, images[1:3].shape
    ('STL10Images', (2, 3, 96, 96))
    >>> [batch.shape[0] for batch in images.batches(2)]  # a re-iterable, for fit
    [2, 1]
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

    iter_batches = batches
    """The same as :meth:`batches` (an older name)."""

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
        ``batches``. ``False`` reads the whole split into memory
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

    Examples
    --------
    >>> from pathlib import Path
    >>> import numpy as np
    >>> folder = Path("stl10_binary")
    >>> folder.mkdir(exist_ok=True)  # a tiny stand-in for the STL-10 binary files
    >>> np.zeros((3, 3, 96, 96), np.uint8).tofile(folder / "train_X.bin")
    >>> np.array([1, 2, 10], np.uint8).tofile(folder / "train_y.bin")
    >>> from calm_np.datasets import load_stl10
    >>> images, labels = load_stl10(folder, "train")
    >>> images.shape, labels  # labels 0..9; the images are read lazily
    ((3, 3, 96, 96), array([0, 1, 9]))
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
        If the file is not ASCII text, a line holds something other than
        non-negative integers, or an index is beyond the training split (when
        ``train_y.bin`` is there); the message names the file.

    Notes
    -----
    One fold per line, indices separated by spaces:
    :math:`\\text{fold}_j \\subset \\{0, \\dots, 4999\\}`.

    Examples
    --------
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from calm_np.datasets import stl10_folds
    >>> Path("stl10_binary").mkdir(exist_ok=True)
    >>> np.savetxt("stl10_binary/fold_indices.txt", [[0, 2, 4], [1, 3, 5]], fmt="%d")
    >>> stl10_folds("stl10_binary")
    [array([0, 2, 4]), array([1, 3, 5])]
    """
    folder = _stl10_folder(data_dir)
    path = folder / "fold_indices.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"STL-10 fold file not found: {folder} has no fold_indices.txt (it "
            "ships in stl10_binary.tar.gz next to train_X.bin); without it the "
            "standard 10-fold protocol cannot be followed"
        )
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not a text file of indices (byte {exc.start} is "
            f"0x{exc.object[exc.start]:02x}, not ASCII); it is not STL-10's "
            "fold_indices.txt"
        ) from None
    folds = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fold = np.array([int(tok) for tok in line.split()], dtype=np.int64)
        except (ValueError, OverflowError) as exc:
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

    Examples
    --------
    >>> from calm_np.datasets import load_digits_images
    >>> images, labels = load_digits_images()
    >>> images.shape, float(images.max()), labels[:5]
    ((1797, 1, 8, 8), 1.0, array([0, 1, 2, 3, 4]))
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

    Examples
    --------
    >>> from calm_np.datasets import sample_image_crops
    >>> crops = sample_image_crops(4, 32, seed=0)
    >>> crops.shape, bool(0 <= crops.min() and crops.max() <= 1)
    ((4, 3, 32, 32), True)
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
