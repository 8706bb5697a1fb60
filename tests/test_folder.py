"""Your own images: ``datasets.load_image_folder`` and ``--dataset folder``.

Tiny PNG/JPEG folders made here, read back exactly (PNG is lossless); every
bad folder or file is a one-line error naming it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from _helpers import evaluate_help

from calm_np import _folder, datasets, evaluation
from calm_np._cli import main

Image = pytest.importorskip("PIL.Image")

RNG = np.random.default_rng(0)


def write_png(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode=mode).save(path)
    return path


def make_folder(root, classes=("cat", "dog"), n=3, shape=(12, 10), rgb=False):
    """``root/<class>/<i>.png``; returns {path: pixels (c, H, W)}."""
    written = {}
    for c, name in enumerate(classes):
        for i in range(n):
            size = (*shape, 3) if rgb else shape
            pixels = RNG.integers(0, 256, size=size).astype(np.uint8)
            pixels.flat[0] = c  # distinct per class
            path = write_png(root / name / f"{i}.png", pixels)
            written[path] = pixels[None] if not rgb else np.moveaxis(pixels, -1, 0)
    return written


def test_load_image_folder_reads_classes_exactly(tmp_path):
    written = make_folder(tmp_path, n=3)
    images, labels, names = datasets.load_image_folder(tmp_path)
    assert names == ["cat", "dog"]
    assert images.shape == (6, 1, 12, 10) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    for image, pixels in zip(images, written.values(), strict=True):
        np.testing.assert_array_equal(image, pixels)


def test_load_image_folder_rgb_is_channels_first(tmp_path):
    written = make_folder(tmp_path, classes=("a",), n=2, shape=(5, 7), rgb=True)
    images, labels, _ = datasets.load_image_folder(tmp_path)
    assert images.shape == (2, 3, 5, 7)
    for image, pixels in zip(images, written.values(), strict=True):
        np.testing.assert_array_equal(image, pixels)


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(4):
        write_png(tmp_path / f"{i}.png", np.full((6, 6), i * 10))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    images, labels, names = datasets.load_image_folder(tmp_path)
    assert labels is None and names == []
    assert images.shape == (4, 1, 6, 6)
    np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 10, 20, 30])


def test_size_and_mode_resize_and_convert(tmp_path):
    write_png(tmp_path / "a" / "big.png", RNG.integers(0, 256, (20, 30)))
    write_png(tmp_path / "a" / "small.png", RNG.integers(0, 256, (10, 8, 3)))
    images, _, _ = datasets.load_image_folder(tmp_path, size=(8, 9), mode="RGB")
    assert images.shape == (2, 3, 8, 9)
    gray, _, _ = datasets.load_image_folder(tmp_path, size=4, mode="L")
    assert gray.shape == (2, 1, 4, 4)
    rgba, _, _ = datasets.load_image_folder(tmp_path, size=4, mode="RGBA")
    assert rgba.shape == (2, 4, 4, 4) and np.all(rgba[:, 3] == 255)


def test_mixed_gray_and_colour_become_rgb(tmp_path):
    write_png(tmp_path / "0.png", np.full((4, 4), 7))
    write_png(tmp_path / "1.png", np.full((4, 4, 3), 9))
    images, _, _ = datasets.load_image_folder(tmp_path)
    assert images.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(images[0], 7)


def test_jpeg_and_palette_files_are_read(tmp_path):
    Image.fromarray(np.full((6, 6, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.full((6, 6), 3, np.uint8)).convert("P").save(tmp_path / "b.gif")
    images, _, _ = datasets.load_image_folder(tmp_path)
    assert images.shape == (2, 3, 6, 6)
    assert abs(int(images[0].mean()) - 128) <= 2


def test_test_folder_uses_the_training_classes(tmp_path):
    make_folder(tmp_path / "train", classes=("a", "b", "c"), n=2)
    make_folder(tmp_path / "test", classes=("c",), n=2)
    _, _, names = datasets.load_image_folder(tmp_path / "train")
    _, labels, _ = datasets.load_image_folder(tmp_path / "test", classes=names)
    np.testing.assert_array_equal(labels, [2, 2])


def test_large_folders_go_to_an_unlinked_memmap(tmp_path, monkeypatch):
    make_folder(tmp_path, classes=("a",), n=3, shape=(8, 8))
    monkeypatch.setattr(_folder, "IN_MEMORY_BYTES", 10)
    images, _, _ = datasets.load_image_folder(tmp_path)
    assert isinstance(images, np.memmap)
    assert images.shape == (3, 1, 8, 8) and images.any()
    import os

    assert not os.path.exists(images.filename)  # nothing left on disk


# -- hostile folders and files: one clear error naming what to fix ------------
def _bad_folder(kind, root):
    if kind == "missing":
        return root / "nope"
    if kind == "a_file":
        (root / "file.png").write_bytes(b"x")
        return root / "file.png"
    if kind == "empty":
        return root
    if kind == "only_text":
        (root / "a.txt").write_text("x")
        return root
    if kind == "mixed_layout":
        write_png(root / "loose.png", np.zeros((4, 4)))
        write_png(root / "cls" / "0.png", np.zeros((4, 4)))
        return root
    if kind == "empty_class":
        write_png(root / "a" / "0.png", np.zeros((4, 4)))
        (root / "b").mkdir()
        return root
    if kind == "corrupt":
        write_png(root / "a" / "0.png", np.zeros((4, 4)))
        (root / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        return root
    if kind == "truncated":
        path = write_png(root / "a" / "0.png", RNG.integers(0, 256, (40, 40)))
        write_png(root / "a" / "1.png", RNG.integers(0, 256, (40, 40)))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return root
    if kind == "sizes_differ":
        write_png(root / "a" / "0.png", np.zeros((4, 4)))
        write_png(root / "a" / "1.png", np.zeros((5, 4)))
        return root
    if kind == "sixteen_bit":
        Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(root / "deep.png")
        return root
    if kind == "empty_file":
        (root / "0.png").write_bytes(b"")
        return root
    raise AssertionError(kind)


BAD_FOLDERS = [
    ("missing", FileNotFoundError, "nope does not exist"),
    ("a_file", FileNotFoundError, "file.png does not exist or is not a folder"),
    ("empty", ValueError, "holds no image files"),
    ("only_text", ValueError, "holds no image files"),
    ("mixed_layout", ValueError, "mixes image files .*loose.png"),
    ("empty_class", ValueError, "class folder .*b holds no image files"),
    ("corrupt", ValueError, "1.png cannot be read as an image"),
    ("truncated", ValueError, "0.png cannot be decoded"),
    ("sizes_differ", ValueError, "1.png is 5x4 .*give size="),
    ("sixteen_bit", ValueError, "deep.png has Pillow mode .*8 bits"),
    ("empty_file", ValueError, "0.png cannot be read as an image"),
]


@pytest.mark.parametrize("kind, exc, match", BAD_FOLDERS)
def test_hostile_image_folder_names_the_file(tmp_path, kind, exc, match):
    path = _bad_folder(kind, tmp_path)
    with pytest.raises(exc, match=match):
        datasets.load_image_folder(path)


BAD_ARGS = [
    (dict(size=0), ValueError, "size must be None, a positive int"),
    (dict(size=(3,)), ValueError, "size must be None, a positive int"),
    (dict(size=(3, -1)), ValueError, "size must be None, a positive int"),
    (dict(size=2.5), TypeError, "size must be None, an int"),
    (dict(size=True), ValueError, "size must be None, a positive int"),
    (dict(mode="CMYK"), ValueError, "mode must be None or one of"),
    (dict(mode="rgb"), ValueError, "mode must be None or one of"),
    (dict(classes=["x"]), ValueError, "not among the classes"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_ARGS)
def test_hostile_image_folder_arguments(tmp_path, kwargs, exc, match):
    make_folder(tmp_path, classes=("a",), n=1)
    with pytest.raises(exc, match=match):
        datasets.load_image_folder(tmp_path, **kwargs)


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    make_folder(tmp_path, classes=("a",), n=1)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "calm_np\[images\]"'):
        datasets.load_image_folder(tmp_path)


# -- evaluation.load_dataset("folder") and the command line ----------------------
def test_load_dataset_folder_shuffles_and_labels_test_alike(tmp_path):
    make_folder(tmp_path / "train", classes=("a", "b"), n=6, shape=(8, 8))
    make_folder(tmp_path / "test", classes=("a", "b"), n=2, shape=(8, 8))
    X_tr, y_tr, X_te, y_te = evaluation.load_dataset("folder", tmp_path, limit=4)
    assert X_tr.shape == (4, 1, 8, 8) and X_te.shape == (4, 1, 8, 8)
    assert set(y_tr) == {0, 1}  # the first images mix the classes
    assert sorted(y_te) == [0, 0, 1, 1]
    X_fit, _, none, _ = evaluation.load_dataset("folder", tmp_path, test=False)
    assert X_fit.shape[0] == 12 and none is None  # fit reads train/


def _png_folder(root, n=24):
    rng = np.random.default_rng(1)
    for split, count in (("train", n), ("test", n // 2)):
        for i in range(count):
            label = i % 2
            pixels = rng.integers(0, 60, (12, 12))
            pixels[2:6, 2 + 5 * label : 6 + 5 * label] += 180
            write_png(root / split / f"c{label}" / f"{i}.png", pixels)
    return root


TINY = ["--n-kernels", "4", "--kernel-size", "3", "--max-iter", "2", "--quiet"]


def test_cli_evaluate_folder_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = _png_folder(tmp_path / "pngs")
    out = tmp_path / "out"
    status = main(
        ["evaluate", "--dataset", "folder", "--data-dir", str(data), *TINY,
         "--out", str(out), "--pooling", "2"]
    )  # fmt: skip
    stdout, err = capsys.readouterr()
    assert status == 0, err
    assert "test accuracy" in stdout and "folder test images" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "folder" and summary["n_train"] == 24
    assert summary["image_shape"] == [1, 12, 12]
    status = main(
        ["fit", "--dataset", "folder", "--data-dir", str(data / "train" / "c0"),
         *TINY, "--out", str(tmp_path / "fit"), "--pooling", "2"]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err


CLI_ERRORS = [
    (["evaluate", "--dataset", "digits", "--data-dir", "{d}"], "--data-dir is not"),
    (["fit", "--dataset", "sample-images", "--data-dir", "{d}"], "--data-dir is not"),
    (["fit", "--dataset", "folder"], "--dataset folder needs --data-dir"),
    (["evaluate", "--dataset", "folder", "--data-dir", "{d}/train"], "has no train/"),
    (["fit", "--image-size", "8"], "--image-size resizes or converts"),
    (["fit", "--image-mode", "L"], "--image-mode resizes or converts"),
    (["fit", "--dataset", "folder", "--data-dir", "{d}/nope"], "is not a folder"),
]


@pytest.mark.parametrize("args, fragment", CLI_ERRORS)
def test_hostile_cli_folder_options(tmp_path, capsys, args, fragment):
    data = _png_folder(tmp_path / "pngs", n=4)
    argv = [a.replace("{d}", str(data)) for a in args] + ["--out", str(tmp_path)]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_cli_folder_image_size_and_mode(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = _png_folder(tmp_path / "pngs", n=8)
    status = main(
        ["fit", "--dataset", "folder", "--data-dir", str(data), *TINY,
         "--image-size", "10x11", "--image-mode", "RGB", "--pooling", "1",
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["image_shape"] == [3, 10, 11]


def test_cli_help_lists_folder(tmp_path):
    out = evaluate_help()
    assert "folder" in out and "--image-size" in out
