"""Your own images: a folder of PNG/JPEG files as ``(n, c, H, W)`` uint8.

:func:`load_image_folder` reads the ImageFolder layout (one sub-folder per
class, as torchvision's ``ImageFolder``; a flat folder of images means no
labels).  It works in two passes, so that nothing is misread and memory
stays bounded:

1. :func:`image_folder_files` lists the files and their classes, and reads
   each file's *header* only (Pillow's ``Image.open`` does not decode):
   size and mode.  Mixed sizes (without ``size=``) or an unreadable file are
   refused here, naming the file, before any pixel is decoded;
2. :func:`read_images` decodes one file at a time into one preallocated
   array.  Above :data:`IN_MEMORY_BYTES` that array is a memory map of a
   temporary file that is unlinked at once (the space is freed when the map
   is), so a folder larger than memory is read batch by batch by ``fit``
   like any memmap.

Pillow is needed (``pip install "calm_np[images]"``) and imported only when
a function here is called.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import _params

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_MODES",
    "image_folder_files",
    "load_image_folder",
    "read_images",
]

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm",
)  # fmt: skip
"""File names (case-insensitive) read as images; other files are skipped."""

IMAGE_MODES = {"L": 1, "RGB": 3, "RGBA": 4}
"""The ``mode`` values :func:`read_images` takes, and their channel counts."""

IN_MEMORY_BYTES = 256 * 2**20
"""Above this many decoded bytes, images go into an unlinked temporary memmap."""

# Pillow modes that convert to 8-bit grayscale without loss of meaning
_GRAY = {"1", "L", "LA", "La"}
# 8-bit colour modes; anything else (16-bit, float, 32-bit integer) is refused
_COLOUR = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_INSTALL = 'pip install "calm_np[images]"'


def _pillow(caller):
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"{caller} decodes image files with Pillow, which is not installed; "
            f"install it with: {_INSTALL}"
        ) from None
    return Image


def _is_image(path):
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder):
    """Image files under ``folder`` (recursively), sorted; hidden ones skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if _is_image(Path(f))]
    return found


def image_folder_files(path, *, classes=None):
    """The image files of a folder, their labels and the class names.

    Parameters
    ----------
    path : str or path-like
        A folder in the ImageFolder layout: one sub-folder per class
        (``path/cat/1.png``, ``path/dog/7.jpg``; files inside a class folder
        may sit in deeper folders), or a flat folder of images (no labels).
        Hidden files and folders (``.name``) and files whose names do not
        end in one of :data:`IMAGE_EXTENSIONS` are skipped.
    classes : sequence of str or None, default=None
        The class names, in label order; by default the sub-folders' names,
        sorted.  Give the training set's to read a test set with the same
        labels (a test folder may lack some classes, not add new ones).

    Returns
    -------
    files : list of Path
    labels : ndarray of shape (n_files,), dtype int64, or None
        ``None`` for a flat folder.
    class_names : list of str
        Empty for a flat folder.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a folder.
    ValueError
        If the folder holds no images, mixes images with class folders, has an
        empty class folder, or a class not in ``classes``; the message names
        the folder.

    Examples
    --------
    >>> import os
    >>> import numpy as np
    >>> from PIL import Image
    >>> for name, value in [("cat/a.png", 0), ("cat/b.png", 100), ("dog/c.png", 200)]:
    ...     os.makedirs(os.path.dirname(f"pets/{name}"), exist_ok=True)
    ...     Image.fromarray(np.full((4, 6), value, np.uint8)).save(f"pets/{name}")
    >>> from calm_np.datasets import image_folder_files
    >>> files, labels, class_names = image_folder_files("pets")
    >>> [f.name for f in files], labels, class_names
    (['a.png', 'b.png', 'c.png'], array([0, 0, 1]), ['cat', 'dog'])
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist or is not a folder; give a "
            "folder of images, or of one sub-folder of images per class"
        )
    subfolders = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    loose = sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))
    if not subfolders:
        if not loose:
            raise ValueError(
                f"image folder {folder} holds no image files (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        if classes is not None:
            raise ValueError(
                f"image folder {folder} has no class sub-folders, but classes "
                f"{list(classes)} were asked for; put each class in its own "
                "sub-folder"
            )
        return loose, None, []
    if loose:
        raise ValueError(
            f"image folder {folder} mixes image files ({loose[0].name}, ...) with "
            f"class sub-folders ({subfolders[0].name}, ...); move the images into "
            "a class folder, or point at a folder of images only"
        )
    names = [p.name for p in subfolders]
    if classes is None:
        classes = names
    classes = [str(c) for c in classes]
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise ValueError(
            f"image folder {folder} has class folder(s) {unknown} that are not "
            f"among the classes {classes} (those of the training folder)"
        )
    files, labels = [], []
    for sub in subfolders:
        found = _images_under(sub)
        if not found:
            raise ValueError(
                f"class folder {sub} holds no image files (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add its images"
            )
        files += found
        labels += [index[sub.name]] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


def _check_mode(mode):
    if mode is not None and mode not in IMAGE_MODES:
        raise ValueError(
            f"mode must be None or one of {tuple(IMAGE_MODES)}, got {mode!r}"
        )
    return mode


@contextlib.contextmanager
def _opened(Image, file):
    """``Image.open(file)``; every failure a ValueError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                yield im
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise type(exc)(exc.errno, exc.strerror, str(file)) from None
        raise ValueError(
            f"{file} cannot be read as an image ({type(exc).__name__}: {exc}); "
            "remove or replace the file"
        ) from None


def _headers(Image, files):
    """``(size (H, W), mode)`` of each file, from its header only."""
    out = []
    for file in files:
        with _opened(Image, file) as im:
            out.append(((im.height, im.width), im.mode))
    return out


def _target_mode(modes, files, mode):
    for file, m in zip(files, modes, strict=True):
        if m not in _GRAY and m not in _COLOUR:
            raise ValueError(
                f"{file} has Pillow mode {m!r} (16-bit, 32-bit or float pixels); "
                "calm_np reads 8-bit images: convert the file to 8 bits"
            )
    if mode is not None:
        return mode
    return "L" if all(m in _GRAY for m in modes) else "RGB"


def read_images(files, *, size=None, mode=None):
    """Decode image files into one ``(n, c, H, W)`` uint8 array.

    Parameters
    ----------
    files : sequence of path-like
    size : int, (int, int) or None, default=None
        Resize every image to ``(height, width)`` (bilinear); ``None`` keeps
        the files' size, which must then be the same for all.
    mode : {"L", "RGB", "RGBA"} or None, default=None
        Convert every image to grayscale (1 channel), RGB (3) or RGBA (4);
        ``None``: ``"L"`` when every file is grayscale, else ``"RGB"`` (an
        alpha channel is dropped: pass ``"RGBA"`` to keep it).

    Returns
    -------
    images : ndarray or numpy.memmap of shape (n, c, H, W), dtype uint8
        In memory up to :data:`IN_MEMORY_BYTES`; above, a memory map of an
        already unlinked temporary file (nothing is left on disk).

    Raises
    ------
    ImportError
        If Pillow is missing (the message gives the pip command).
    ValueError
        If a file cannot be decoded, has a size unlike the first file's
        (without ``size``) or has more than 8 bits per channel; the message
        names the file.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> Image.fromarray(np.full((4, 6), 50, np.uint8)).save("gray.png")
    >>> Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save("colour.png")
    >>> from calm_np.datasets import read_images
    >>> images = read_images(["gray.png", "colour.png"], size=(4, 6), mode="L")
    >>> images.shape, images.dtype, images[:, 0, 0, 0]
    ((2, 1, 4, 6), dtype('uint8'), array([ 50, 200], dtype=uint8))
    """
    Image = _pillow("read_images")
    size = _params.check("read_images", "size", size)
    mode = _check_mode(mode)
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("files is empty; give at least one image file")
    headers = _headers(Image, files)
    if size is None:
        first = headers[0][0]
        for file, (shape, _) in zip(files, headers, strict=True):
            if shape != first:
                raise ValueError(
                    f"{file} is {shape[0]}x{shape[1]} (height x width) but "
                    f"{files[0]} is {first[0]}x{first[1]}; give size=(H, W) (or "
                    "--image-size HxW) to resize them all"
                )
        size = first
    mode = _target_mode([m for _, m in headers], files, mode)
    shape = (len(files), IMAGE_MODES[mode], *size)
    images = _allocate(shape)
    for i, file in enumerate(files):
        with _opened(Image, file) as im:
            try:
                im = im.convert(mode)
                if (im.height, im.width) != size:
                    im = im.resize(size[::-1], Image.Resampling.BILINEAR)
                pixels = np.asarray(im, dtype=np.uint8)
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise ValueError(
                    f"{file} cannot be decoded ({type(exc).__name__}: {exc}); "
                    "remove or replace the file"
                ) from None
        images[i] = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return images


def _allocate(shape):
    """A zeroed uint8 array: in memory, or an unlinked temporary memmap."""
    if math.prod(shape) <= IN_MEMORY_BYTES:
        return np.zeros(shape, dtype=np.uint8)
    fd, name = tempfile.mkstemp(prefix="calm_np-images-", suffix=".u8")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.truncate(math.prod(shape))
        images = np.memmap(name, dtype=np.uint8, mode="r+", shape=shape)
    finally:
        with contextlib.suppress(OSError):  # the map keeps the data alive
            os.remove(name)
    return images


def load_image_folder(path, *, size=None, mode=None, classes=None):
    """Images of a folder (ImageFolder layout), as calm_np reads them.

    Parameters
    ----------
    path : str or path-like
        One sub-folder per class (``path/<class>/<image>``), or a flat folder
        of images (no labels); see :func:`image_folder_files`.
    size : int, (int, int) or None, default=None
        Resize to ``(height, width)``; ``None``: all files must share a size.
    mode : {"L", "RGB", "RGBA"} or None, default=None
        Grayscale, RGB or RGBA; ``None``: grayscale when every file is.
    classes : sequence of str or None, default=None
        Class names in label order (default: the sub-folders, sorted); pass
        the training folder's to label a test folder the same way.

    Returns
    -------
    images : ndarray of shape (n, c, H, W), dtype uint8
        Channels first, pixel values 0..255 (a memmap above
        :data:`IN_MEMORY_BYTES`).  Scale them (e.g. divide by 255, or
        :class:`~calm_np.preprocessing.Standardize`) before fitting.
    labels : ndarray of shape (n,), dtype int64, or None
    class_names : list of str

    Raises
    ------
    ImportError
        If Pillow is not installed: ``pip install "calm_np[images]"``.
    FileNotFoundError, ValueError
        A missing folder, no images, a mixed layout, a file that cannot be
        decoded or differs in size; the message names the file or folder.

    Notes
    -----
    :math:`X[i, c, y, x]` is channel ``c`` of pixel ``(y, x)`` of file ``i``,
    files in sorted order, class by class.

    Examples
    --------
    >>> import os
    >>> import numpy as np
    >>> from PIL import Image
    >>> for name, value in [("cat/a.png", 0), ("cat/b.png", 100), ("dog/c.png", 200)]:
    ...     os.makedirs(os.path.dirname(f"pets/{name}"), exist_ok=True)
    ...     Image.fromarray(np.full((4, 6), value, np.uint8)).save(f"pets/{name}")
    >>> from calm_np.datasets import load_image_folder
    >>> images, labels, class_names = load_image_folder("pets")
    >>> images.shape, images.dtype, labels, class_names
    ((3, 1, 4, 6), dtype('uint8'), array([0, 0, 1]), ['cat', 'dog'])
    >>> images[:, 0, 0, 0]
    array([  0, 100, 200], dtype=uint8)
    """
    _pillow("load_image_folder")
    files, labels, names = image_folder_files(path, classes=classes)
    return read_images(files, size=size, mode=mode), labels, names
