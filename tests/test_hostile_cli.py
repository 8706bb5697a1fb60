"""The ``calm-np`` command line against hostile input.

Every case ends with exit status 1 (a run error) or 2 (a bad command line),
one line on stderr that names the option or file and says what to change,
no traceback, and nothing written: paths, model files and the environment
are checked before any data is read or any model fitted.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from calm_np import _cli, evaluation
from calm_np._cli import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

TINY = ["--n-kernels", "4", "--kernel-size", "3", "--max-iter", "2", "--quiet"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = pytest.mark.skipif(
    IS_ROOT, reason="root reads and writes regardless of permission bits"
)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALM_NP_DEBUG", raising=False)
    monkeypatch.delenv("CALM_NP_NUM_THREADS", raising=False)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A real model file, fitted once on a few digits."""
    folder = tmp_path_factory.mktemp("model")
    assert main(["fit", *TINY, "--limit", "30", "--out", str(folder)]) == 0
    return folder / "model.npz"


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if a run gets as far as reading data or fitting."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(evaluation, "load_dataset", refuse)
    monkeypatch.setattr(_cli.ConvolutionalMixture, "fit", refuse)


def snapshot(folder):
    return sorted(
        (str(p.relative_to(folder)), p.is_dir()) for p in folder.rglob("*")
    )


def check_error(capsys, tmp_path, args, status, *fragments):
    """Run, then: the status, one line naming ``fragments``, nothing written."""
    before = snapshot(tmp_path)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == status, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    assert out == ""
    assert snapshot(tmp_path) == before
    return lines[0]


# ---------------------------------------------------------------------------
# option values: status 2, before anything runs
# ---------------------------------------------------------------------------

BAD_VALUES = [
    (["fit", "--n-kernels", "abc"], "--n-kernels"),
    (["fit", "--n-kernels", "-3"], "must be >= 1"),
    (["fit", "--kernel-size", "3x"], "--kernel-size"),
    (["fit", "--kernel-size", "3x3x3"], "HxW"),
    (["fit", "--padding", "1x-1"], "--padding"),
    (["fit", "--reg-kernels", "inf"], "--reg-kernels"),
    (["fit", "--tol", "-0.1"], "--tol"),
    (["fit", "--max-iter", "1.5"], "--max-iter"),
    (["fit", "--n-init", "0"], "--n-init"),
    (["fit", "--batch-size", "-1"], "--batch-size"),
    (["fit", "--random-state", "-1"], "--random-state"),
    (["fit", "--pooling", "2y"], "--pooling"),
    (["fit", "--limit", "0"], "--limit"),
    (["fit", "--fit-limit", "x"], "--fit-limit"),
    (["evaluate", "--C", "-1"], "--C"),
    (["evaluate", "--C", "nan"], "--C"),
    (["fit", "--dtype", "int8"], "--dtype"),
    (["fit", "--dataset", "cifar10"], "--dataset"),
    (["fit", "--preset", "fastest"], "--preset"),
    (["fit", "--backend", "jax"], "--backend"),
    (["fit", "--method", "winograd"], "--method"),
    (["fit", "--features", "max"], "--features"),
    (["fit", "--preprocess", "pca"], "--preprocess"),
    (["fit", "--frobnicate"], "--frobnicate"),
    (["show", "a.npz", "b.npz"], "b.npz"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD_VALUES)
def test_hostile_cli_bad_option_value(capsys, tmp_path, no_work, args, fragment):
    line = check_error(capsys, tmp_path, args, 2, fragment)
    assert "--help" in line  # where to look for what is allowed


# ---------------------------------------------------------------------------
# paths: status 1, checked before any data is read or model fitted
# ---------------------------------------------------------------------------


def test_hostile_cli_missing_data_dir(capsys, tmp_path, no_work):
    missing = tmp_path / "nowhere"
    args = ["fit", "--dataset", "fashion-mnist", "--data-dir", missing, "-q"]
    check_error(capsys, tmp_path, args, 1, "--data-dir", missing)


def test_hostile_cli_data_dir_is_a_file(capsys, tmp_path, no_work):
    (tmp_path / "data").write_text("x")
    args = ["fit", "--dataset", "mnist", "--data-dir", tmp_path / "data", "-q"]
    check_error(capsys, tmp_path, args, 1, "--data-dir", "not a folder")


@pytest.mark.parametrize("dataset", ["mnist", "stl10"])
def test_hostile_cli_dataset_without_data_dir(capsys, tmp_path, no_work, dataset):
    args = ["evaluate", "--dataset", dataset, "-q"]
    check_error(capsys, tmp_path, args, 1, "--data-dir")


def test_hostile_cli_out_is_a_file(capsys, tmp_path, no_work):
    (tmp_path / "taken").write_text("x")
    args = ["fit", *TINY, "--out", tmp_path / "taken"]
    check_error(capsys, tmp_path, args, 1, "--out", "is a file")


def test_hostile_cli_out_under_a_file(capsys, tmp_path, no_work):
    # never creatable, not even by root
    (tmp_path / "taken").write_text("x")
    args = ["evaluate", *TINY, "--out", tmp_path / "taken" / "sub" / "run"]
    check_error(capsys, tmp_path, args, 1, "--out", "taken", "not a folder")


def test_hostile_cli_output_file_is_a_folder(capsys, tmp_path, no_work):
    (tmp_path / "run" / "summary.json").mkdir(parents=True)
    args = ["fit", *TINY, "--out", tmp_path / "run"]
    check_error(capsys, tmp_path, args, 1, "--out", "summary.json", "is a folder")


@ROOT_SKIP
def test_hostile_cli_out_not_writable(capsys, tmp_path, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args = ["fit", *TINY, "--out", locked / "run"]
        check_error(capsys, tmp_path, args, 1, "--out", "no permission", locked)
    finally:
        locked.chmod(0o700)


@ROOT_SKIP
def test_hostile_cli_model_not_readable(capsys, tmp_path, no_work, saved_model):
    copy = tmp_path / "secret.npz"
    copy.write_bytes(saved_model.read_bytes())
    copy.chmod(0o000)
    try:
        args = ["evaluate", "--model", copy, "--out", tmp_path / "o", "-q"]
        check_error(capsys, tmp_path, args, 1, "--model", "cannot be read")
    finally:
        copy.chmod(0o600)


@pytest.mark.parametrize("option", ["--model", "--warm-start", "--init"])
def test_hostile_cli_model_option_missing_file(capsys, tmp_path, no_work, option):
    command = "evaluate" if option == "--model" else "fit"
    args = [command, option, tmp_path / "absent.npz", "-q"]
    check_error(capsys, tmp_path, args, 1, option, "absent.npz", "does not exist")


def test_hostile_cli_model_is_a_folder(capsys, tmp_path, no_work):
    (tmp_path / "m.npz").mkdir()
    args = ["evaluate", "--model", tmp_path / "m.npz", "-q"]
    check_error(capsys, tmp_path, args, 1, "--model", "is a folder")


def test_hostile_cli_init_neither_method_nor_file(capsys, tmp_path, no_work):
    check_error(capsys, tmp_path, ["fit", "--init", "kmeans"], 1, "--init", "kmeans++")


def test_hostile_cli_show_out_under_a_file(capsys, tmp_path, saved_model):
    (tmp_path / "taken").write_text("x")
    args = ["show", saved_model, "--out", tmp_path / "taken" / "k.png"]
    check_error(capsys, tmp_path, args, 1, "--out", "not a folder")


def test_hostile_cli_show_out_folder_writes_inside(capsys, tmp_path, saved_model):
    folder = tmp_path / "figures"
    folder.mkdir()
    assert main(["show", str(saved_model), "--out", str(folder)]) == 0
    out, _ = capsys.readouterr()
    written = folder / "model_kernels.png"
    assert out.strip().splitlines()[-1] == str(written)
    assert written.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]  # nothing beside


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_hostile_cli_bad_thread_count(capsys, tmp_path, no_work, monkeypatch, value):
    monkeypatch.setenv("CALM_NP_NUM_THREADS", value)
    args = ["fit", *TINY, "--out", tmp_path / "run"]
    check_error(capsys, tmp_path, args, 1, "CALM_NP_NUM_THREADS", "positive integer")


# ---------------------------------------------------------------------------
# hostile model files: show, evaluate --model, fit --warm-start / --init
# ---------------------------------------------------------------------------


def _header_npz(path, header, saved_model):
    """A model file whose arrays are real but whose header is ``header``."""
    with np.load(saved_model) as data:
        arrays = {name: data[name] for name in data.files}
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    arrays["header"] = np.frombuffer(blob, dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _hostile(kind, path, saved_model):
    good = saved_model.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("kernels = [[1, 2], [3, 4]]\n")
    elif kind == "zip_of_text":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not arrays")
    elif kind == "foreign_arrays":
        np.savez(path, a=np.zeros(3))
    elif kind == "header_list":
        _header_npz(path, [1, 2, 3], saved_model)
    elif kind == "header_lacks_keys":
        header = json.loads(bytes(np.load(saved_model)["header"]).decode())
        for key in ("params", "kernels_shape", "n_iter"):
            header.pop(key)
        _header_npz(path, header, saved_model)
    elif kind == "header_not_json":
        _header_npz(path, b"{not json", saved_model)
    elif kind == "header_not_utf8":
        _header_npz(path, b"\xff\xfe\x00", saved_model)


HOSTILE = [
    "truncated",
    "empty",
    "text",
    "zip_of_text",
    "foreign_arrays",
    "header_list",
    "header_lacks_keys",
    "header_not_json",
    "header_not_utf8",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_cli_show_damaged_model(capsys, tmp_path, saved_model, kind):
    bad = tmp_path / "bad.npz"
    _hostile(kind, bad, saved_model)
    check_error(capsys, tmp_path, ["show", bad], 1, "bad.npz")


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("option", ["--model", "--warm-start", "--init"])
def test_hostile_cli_damaged_model_option(
    capsys, tmp_path, saved_model, no_work, kind, option
):
    bad = tmp_path / "bad.npz"
    _hostile(kind, bad, saved_model)
    command = "evaluate" if option == "--model" else "fit"
    args = [command, option, bad, "--out", tmp_path / "run", "-q"]
    check_error(capsys, tmp_path, args, 1, option, "bad.npz")


def test_hostile_cli_debug_shows_the_cause(capsys, tmp_path, saved_model, monkeypatch):
    bad = tmp_path / "bad.npz"
    _hostile("header_list", bad, saved_model)
    monkeypatch.setenv("CALM_NP_DEBUG", "1")
    with pytest.raises(_cli.UserError) as info:
        main(["show", str(bad)])
    assert info.value.__cause__ is not None  # the estimator's own error
