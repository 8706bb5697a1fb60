"""Measuring learned kernels: named settings, features and a linear probe.

What the command line (``calm-np evaluate``), the examples and the
benchmarks share:

- :data:`PRESETS`: named settings by data set, estimator parameters plus
  ``preprocess`` (a :data:`calm_np.preprocessing.PREPROCESSORS` name) and
  ``fit_limit`` (fit the kernels on the first images only);
  :func:`get_preset` reads one as a :class:`Preset` (the estimator's
  parameters apart from the pipeline's) and :func:`make_estimator` builds
  exactly the model ``calm-np evaluate`` fits; :func:`preset` is the flat
  dict of both;
- :func:`load_dataset`: a data set by name, split into training and test
  images;
- :func:`preprocess`: a named preprocessing fitted on the training images;
- :func:`extract_features`: ``transform`` in chunks, as a host array;
- :func:`linear_probe`: the test accuracy of a multinomial logistic
  regression on standardized features.

scikit-learn (the bundled digits) and SciPy (the probe's solver) are
imported only inside the functions that need them; importing this module
does not.

Every argument is checked by the one parameter table of these functions
(``_params.PARAMS``): a bad ``limit``, ``batch_size``, ``C`` or name is a
``TypeError`` or ``ValueError`` naming the function and the parameter.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import _params, datasets

# the presets live in _presets; their names are re-exported here, the
# private tables too (the command line and the tests read them)
from ._presets import (  # noqa: F401
    _DATASET_PRESETS,  # noqa: F401
    _DIGITS,  # noqa: F401
    _FAMILY,  # noqa: F401
    _MNIST,  # noqa: F401
    _NATURAL,  # noqa: F401
    _NETWORK_BY_DATASET,  # noqa: F401
    _NETWORK_OPTIONS,  # noqa: F401
    _PAPER,  # noqa: F401
    _PIPELINE,  # noqa: F401
    _STL10,  # noqa: F401
    _WHITE,  # noqa: F401
    DATA_DIR_DATASETS,  # noqa: F401
    DATASETS,  # noqa: F401
    IMAGE_SHAPES,  # noqa: F401
    NETWORK_PRESETS,  # noqa: F401
    PRESETS,  # noqa: F401
    Preset,  # noqa: F401
    _check_names,  # noqa: F401
    _text,  # noqa: F401
    build_model,  # noqa: F401
    check_model_fits,  # noqa: F401
    get_preset,  # noqa: F401
    make_estimator,  # noqa: F401
    preset,  # noqa: F401
)
from ._probe import PROBE
from ._probe import linear_probe as _linear_probe
from ._xp import to_numpy
from .preprocessing import PREPROCESSORS, make_preprocessor, to_unit_float

__all__ = [
    "DATASETS",
    "PRESETS",
    "PROBE",
    "Preset",
    "ZCA_MAX_VALUES",
    "array_mover",
    "extract_features",
    "get_preset",
    "linear_probe",
    "load_dataset",
    "make_estimator",
    "preprocess",
    "preset",
]

ZCA_MAX_VALUES = 4096
"""Largest image (``c·H·W`` values) whose whole-image ZCA ``preprocess``
takes: its covariance has ``(c·H·W)²`` float64 entries (128 MiB here; a
96x96x3 STL-10 image would need 5.7 GiB)."""


def array_mover(backend="numpy", device=None, dtype="float32"):
    """A function moving host arrays to ``backend``, and the device's name.

    Parameters
    ----------
    backend : {"numpy", "torch", "cupy"}, default="numpy"
    device : str or None, default=None
        A torch device (default: ``cuda`` when available, else ``cpu``);
        NumPy takes ``None`` or ``"cpu"``, CuPy ``None`` (its current GPU).
    dtype : {"float32", "float64"}, default="float32"

    Returns
    -------
    move : callable
        ``move(X)``: X as a contiguous array of ``dtype`` on the device.
    device_name : str
        ``"cpu"``, ``"cuda:0"``, ...

    Raises
    ------
    ImportError
        If torch or CuPy is not installed.
    ValueError
        If the device is not usable, or there is no GPU for CuPy, or
        ``backend`` or ``dtype`` is not one of the names above.

    Examples
    --------
    >>> import numpy as np
    >>> from calm_np.evaluation import array_mover
    >>> move, device = array_mover("numpy", dtype="float32")
    >>> device, move(np.arange(3)).dtype
    ('cpu', dtype('float32'))
    """
    where = "array_mover"
    backend = _params.check(where, "backend", backend, ("numpy", "torch", "cupy"))
    dtype = _params.check(where, "dtype", dtype)
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"numpy runs on the CPU, not on device {device!r}")
        np_dtype = np.dtype(dtype)
        return (lambda X: np.ascontiguousarray(X, dtype=np_dtype)), "cpu"
    if backend == "torch":
        try:
            import torch
        except ImportError:
            raise ImportError(
                "the torch backend needs PyTorch; install it (pip install torch) "
                "or use numpy"
            ) from None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
            torch.zeros(1, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(f"device {device} is not usable by torch: {exc}") from None
        t_dtype = getattr(torch, dtype)
        return (lambda X: torch.asarray(X, dtype=t_dtype, device=dev)), str(dev)
    if backend != "cupy":
        raise ValueError(f"backend must be numpy, torch or cupy, got {backend!r}")
    try:
        import cupy
    except ImportError:
        raise ImportError(
            "the cupy backend needs CuPy and a CUDA GPU, and CuPy is not "
            'installed; install it (pip install "calm_np[gpu]") or use numpy'
        ) from None
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, no device: CuPy raises its own runtime errors
        n_gpus = 0
    if n_gpus == 0:
        raise ValueError(
            "cupy needs a CUDA GPU, but none was found; use numpy or torch"
        )
    if device is not None:
        raise ValueError("a device can be chosen for torch only")
    c_dtype = np.dtype(dtype)
    return (lambda X: cupy.asarray(X, dtype=c_dtype)), "cuda:0"


def load_dataset(
    name, data_dir=None, *, limit=None, test=True, seed=0, size=None, mode=None
):
    """``(X_train, y_train, X_test, y_test)`` of a data set, as host arrays.

    ``digits`` is split 70/30 (stratified, ``random_state=0``); MNIST,
    Fashion-MNIST and STL-10 use their own test splits; ``sample-images``
    is ``limit`` (default 1000) random 32x32 crops, unlabelled. ``folder``
    reads your own images (:func:`calm_np.datasets.load_image_folder`):
    ``data_dir/train/<class>/`` and ``data_dir/test/<class>/`` (the test
    set labelled with the training set's classes); without ``test``, a
    folder with ``train`` and ``test`` inside reads ``train``, any other
    folder is read whole (labelled or not). A folder's images are shuffled
    (``seed``) before ``limit``, so that the first images (``fit_limit``) mix
    the classes. ``limit`` keeps the first N training and N test images.
    Without ``test`` (or without labels) the test images and all labels may
    be ``None``.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : str or path-like or None
        The data set's folder: needed by ``mnist``, ``stl10`` and ``folder``,
        optional for ``fashion-mnist``, refused for the bundled ``digits``
        and ``sample-images`` (which read no files).
    limit : int >= 1 or None
    test : bool, default=True
    seed : int >= 0, default=0
    size, mode : see :func:`calm_np.datasets.load_image_folder`
        ``folder`` only.

    Raises
    ------
    TypeError, ValueError
        A bad argument, named.
    FileNotFoundError
        A missing folder or file, named.

    Examples
    --------
    >>> from calm_np.evaluation import load_dataset
    >>> X_train, y_train, X_test, y_test = load_dataset("digits", limit=20)
    >>> X_train.shape, X_test.shape, y_train[:5]
    ((20, 1, 8, 8), (20, 1, 8, 8), array([6, 4, 4, 3, 2]))
    """
    where = "load_dataset"
    name = _params.check(where, "name", name, DATASETS)
    args = _params.check_all(
        where, data_dir=data_dir, limit=limit, test=test, seed=seed
    )
    data_dir, limit, test, seed = args.values()
    if data_dir is not None and name not in DATA_DIR_DATASETS:
        raise ValueError(
            f"{where}: {name} is bundled and reads no files, but data_dir="
            f"{str(data_dir)!r} was given; drop data_dir, or choose a data set "
            f"that reads one ({', '.join(DATA_DIR_DATASETS)})"
        )
    if data_dir is None and name in ("mnist", "stl10", "folder"):
        what = {
            "mnist": "the four MNIST IDX files",
            "stl10": "stl10_binary",
            "folder": "your images: train/<class>/ and test/<class>/",
        }[name]
        raise ValueError(f"{where}: {name} needs data_dir (the folder of {what})")
    if (size is not None or mode is not None) and name != "folder":
        raise ValueError(
            f"{where}: size and mode resize and convert a folder's image files; "
            f"{name} has none (use name='folder')"
        )
    if name == "digits":
        from sklearn.model_selection import train_test_split

        X, y = datasets.load_digits_images()
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=0.3, random_state=0, stratify=y
        )
        return X_tr[:limit], y_tr[:limit], X_te[:limit], y_te[:limit]
    if name in ("mnist", "fashion-mnist"):
        load = datasets.load_mnist if name == "mnist" else datasets.load_fashion_mnist
        X_tr, y_tr = load(data_dir, "train", limit=limit)
        X_te, y_te = load(data_dir, "test", limit=limit) if test else (None, None)
        return X_tr, y_tr, X_te, y_te
    if name == "stl10":
        train, y_tr = datasets.load_stl10(data_dir, "train")
        X_te = y_te = None
        if test:
            X_te, y_te = datasets.load_stl10(data_dir, "test")
            X_te, y_te = X_te[:limit], y_te[:limit]
        return train[:limit], y_tr[:limit], X_te, y_te
    if name == "folder":
        return _load_folder(Path(data_dir).expanduser(), limit, test, seed, size, mode)
    n = 1000 if limit is None else limit  # sample-images
    return datasets.sample_image_crops(n, 32, seed=seed), None, None, None


def _load_folder(folder, limit, test, seed, size, mode):
    """``load_dataset("folder", ...)``: train/ and test/, or one folder."""
    split = (folder / "train").is_dir() and (folder / "test").is_dir()
    if test and not split:
        raise FileNotFoundError(
            f"{folder} has no train/ and test/ sub-folders; evaluating reads "
            f"{folder}/train/<class>/ and {folder}/test/<class>/ (fitting reads "
            "any folder of images)"
        )
    rng = np.random.default_rng(seed)

    def read(path, classes=None):
        files, labels, names = datasets.image_folder_files(path, classes=classes)
        order = rng.permutation(len(files))[:limit]
        files = [files[i] for i in order]
        labels = None if labels is None else labels[order]
        return datasets.read_images(files, size=size, mode=mode), labels, names

    X_tr, y_tr, names = read(folder / "train" if split else folder)
    if not test:
        return X_tr, y_tr, None, None
    if y_tr is None:
        raise ValueError(
            f"{folder}/train holds images but no class sub-folders; evaluating "
            "needs labels: put each class's images in train/<class>/"
        )
    X_te, y_te, _ = read(folder / "test", classes=names)
    if X_te.shape[1:] != X_tr.shape[1:]:
        raise ValueError(
            f"{folder}/test images are {X_te.shape[1:]} (c, H, W) but "
            f"{folder}/train images are {X_tr.shape[1:]}; give size= and mode= "
            "(--image-size, --image-mode) to read both alike"
        )
    return X_tr, y_tr, X_te, y_te


def preprocess(name, X_train, X_test=None, *, window=7, dtype="float64"):
    """Pixels to [0, 1] (:func:`~calm_np.preprocessing.to_unit_float`), then
    the preprocessing ``name`` fitted on ``X_train`` only.

    The arithmetic runs in float64 and the result is cast to ``dtype``;
    ``"none"``, which does none, scales the pixels straight into ``dtype``
    (the same values, without a float64 copy of the images).  ``"zca"``
    whitens whole images and is refused for images of more than
    :data:`ZCA_MAX_VALUES` values (its covariance would not fit: use
    ``"per-image"``, or the model's own ``whiten=True``).

    Returns
    -------
    X_train, X_test : ndarray of shape (n, c, H, W), of ``dtype``
        ``X_test`` is ``None`` when not given.

    Examples
    --------
    >>> import numpy as np
    >>> from calm_np.evaluation import preprocess
    >>> X_train = np.random.default_rng(0).uniform(0, 255, (10, 1, 8, 8))
    >>> A, B = preprocess("standardize", X_train, X_train[:3])
    >>> round(float(A.mean()), 6), round(float(A.std()), 6), B.shape
    (0.0, 1.0, (3, 1, 8, 8))
    """
    where = "preprocess"
    name = _params.check(where, "name", name, PREPROCESSORS)
    window, dtype = _params.check_all(where, window=window, dtype=dtype).values()
    for label, X in (("X_train", X_train), ("X_test", X_test)):
        if X is not None and len(getattr(X, "shape", ())) not in (3, 4):
            raise ValueError(
                f"{where}: {label} must be images (n, c, H, W) or (n, H, W), got "
                f"{type(X).__name__} of shape {getattr(X, 'shape', None)}"
            )
    if len(X_train) == 0:
        raise ValueError(f"{where}: X_train holds no images; give at least one")
    values = math.prod(X_train.shape[1:])
    if name == "zca" and values > ZCA_MAX_VALUES:
        gib = values * values * 8 / 2**30
        raise ValueError(
            f"{where}: 'zca' whitens whole images, but these have {values} values "
            f"(a {gib:.3g} GiB covariance; at most {ZCA_MAX_VALUES} values); use "
            "'per-image', or the model's whiten=True (ZCA of patches)"
        )
    dtype = np.dtype(dtype).type
    step = make_preprocessor(name, window=window)
    work = dtype if name == "none" else np.float64

    def run(X, transform):
        return transform(to_unit_float(X, work)).astype(dtype, copy=False)

    out_train = run(X_train, step.fit_transform)
    out_test = None if X_test is None else run(X_test, step.transform)
    return out_train, out_test


def linear_probe(F_train, y_train, F_test, y_test, *, C=1.0, tol=1e-4, max_iter=1000):
    """Test accuracy of a multinomial logistic regression on standardized
    features (:func:`calm_np._probe.linear_probe`, which documents it).

    ``C`` and ``tol`` must be finite and positive, ``max_iter`` at least 1,
    and both sets non-empty; a bad one is a ``TypeError``/``ValueError``
    naming it.
    """
    C, tol, max_iter = _params.check_all(
        "linear_probe", C=C, tol=tol, max_iter=max_iter
    ).values()
    return _linear_probe(
        F_train, y_train, F_test, y_test, C=C, tol=tol, max_iter=max_iter
    )


linear_probe.__doc__ = _linear_probe.__doc__


def extract_features(model, X, batch_size=1000, *, progress=False):
    """``model.transform`` in chunks (bounded memory), as a NumPy host array.

    The features keep the model's floating dtype (float32 for float32
    images: the main job's 60 000 x 2304 features are 0.55 GB, not 1.1);
    the probe standardizes them in float64 block by block.

    Parameters
    ----------
    model : fitted ConvolutionalMixture
    X : array of shape (n, c, H, W), or an iterable of such batches
        An array is cut into chunks of ``batch_size`` images; batches are
        transformed as they come (e.g. streamed from a memory map).
    batch_size : int, default=1000
    progress : bool, default=False
        Show a tqdm bar over the images of an array of more than one chunk
        (when tqdm is installed).

    Returns
    -------
    features : ndarray of shape (n, n_features), the transform's dtype
        (a Dask ``X`` is computed chunk by chunk).

    Examples
    --------
    >>> import numpy as np
    >>> from calm_np import ConvolutionalMixture
    >>> from calm_np.evaluation import extract_features
    >>> X = np.random.default_rng(0).standard_normal((10, 1, 8, 8))
    >>> model = ConvolutionalMixture(n_kernels=3, kernel_size=3, random_state=0)
    >>> model = model.fit(X)
    >>> F = extract_features(model, X, batch_size=4)  # 3 chunks: 4, 4 and 2
    >>> F.shape, F.dtype, bool(np.allclose(F, model.transform(X)))
    ((10, 3), dtype('float64'), True)
    """
    batch_size, progress = _params.check_all(
        "extract_features", batch_size=batch_size, progress=progress
    ).values()
    if hasattr(X, "shape"):
        n = X.shape[0]
        chunks = (X[i : i + batch_size] for i in range(0, n, batch_size))
    else:
        n, chunks = None, iter(X)
    bar = _bar(n, progress and n is not None and n > batch_size)
    out, filled = [], 0
    for chunk in chunks:
        F = model.transform(chunk)
        if hasattr(F, "dask"):  # a Dask chunk gives a lazy result
            F = F.compute()
        F = np.asarray(to_numpy(F))
        if n is None:
            out.append(F)
        else:  # one array filled in place: no second copy at the end
            if not out:
                out.append(np.empty((n, *F.shape[1:]), dtype=F.dtype))
            out[0][filled : filled + F.shape[0]] = F
        filled += F.shape[0]
        if bar is not None:
            bar.update(F.shape[0])
    if bar is not None:
        bar.close()
    if not out:
        raise ValueError("X holds no images; give at least one to extract features")
    return out[0] if n is not None else np.concatenate(out, axis=0)


def _bar(total, wanted):
    if not wanted:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", leave=False, desc="features")
