"""The ``calm-np`` command line against hostile input (``_cli``, ``_cli_options``).

A bad run ends with exit status 1 (a run error) or 2 (a bad command line),
one line on stderr that names the option or file and says what to change,
no traceback, and nothing written: paths, model files, the environment and
the estimator's settings are checked before any data is read or any model
fitted.  An interrupted write keeps the previous outputs, every preset runs
where it says it does, and ``--help`` states every default.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from _helpers import evaluate_help

import calm_np
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
    return sorted((str(p.relative_to(folder)), p.is_dir()) for p in folder.rglob("*"))


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


# ---------------------------------------------------------------------------
# settings: checked before the data is read; --out probed before the fit;
# an interrupted write keeps the old set; --help states every default
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--padding", "100"], "--padding: padding=100 is more than kernel_size - 1"),
    (["--padding", "3", "--kernel-size", "3"], "--padding: padding=3"),
    (["--kernel-size", "2"], "--padding (--preset's): padding=2"),
    (["--padding", "9", "--layers", "2"], "layers[0]: padding=9"),
])  # fmt: skip
def test_hostile_cli_padding_refused_before_the_data_is_read(
    tmp_path, capsys, monkeypatch, args, fragment
):
    from calm_np import _cli

    monkeypatch.setattr(_cli, "_load_data", lambda *a: pytest.fail("data read"))
    status = main(["fit", "--quiet", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err, err
    assert len(err.strip().splitlines()) == 1


def test_hostile_cli_huge_reg_kernels_is_named(tmp_path, capsys):
    args = ["fit", "--quiet", "--limit", "30", "--reg-kernels", "1e308"]
    status = main([*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "reg_kernels=1e+308" in err and "scale" not in err, err


OUT_CASES = [
    ("", "--out is empty"),
    ("/proc/calm-np-out", "--out"),
    ("/sys/calm-np-out", "--out"),
]


@pytest.mark.parametrize("out, fragment", OUT_CASES)
def test_hostile_cli_out_refused_before_the_fit(tmp_path, capsys, monkeypatch, out,
                                                fragment):  # fmt: skip
    import os

    if out and not os.path.isdir(out.rsplit("/", 1)[0]):
        pytest.skip(f"no {out.rsplit('/', 1)[0]} here")
    monkeypatch.chdir(tmp_path)
    fitted = []
    monkeypatch.setattr(
        calm_np.ConvolutionalMixture, "fit", lambda self, X: fitted.append(1)
    )
    status = main(["fit", "--quiet", "--limit", "20", "--out", out])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err and not fitted, err
    assert list(tmp_path.iterdir()) == []  # nothing written in the current folder


def test_cli_interrupted_write_keeps_the_old_set(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from calm_np import plots

    out = tmp_path / "out"
    tiny = ["--n-kernels", "2", "--kernel-size", "3", "--max-iter", "1", "--quiet"]
    assert main(["fit", *tiny, "--limit", "30", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "model_figures", interrupted)
    assert main(["fit", *tiny, "--limit", "40", "--out", str(out)]) == 130
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # the old set, whole; no staging folder left


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--n-kernels", "5"], "--n-kernels would be ignored"),
        (["--kernel-size", "4"], "--kernel-size would be ignored"),
        (["--max-iter", "7"], "--max-iter would be ignored"),
        (["--fit-limit", "7"], "--fit-limit would be ignored"),
        (["--layers", "2"], "--layers would be ignored"),
    ],
)
def test_hostile_cli_evaluate_model_refuses_fit_options(tmp_path, capsys, args,
                                                        fragment):  # fmt: skip
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    tiny = ["--n-kernels", "2", "--kernel-size", "3", "--max-iter", "1", "--quiet"]
    assert main(["fit", *tiny, "--limit", "30", "--out", str(tmp_path / "m")]) == 0
    model = str(tmp_path / "m" / "model.npz")
    status = main(["evaluate", "--model", model, *args, "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err, err


def test_cli_network_preset_runs_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    status = main(
        ["evaluate", "--preset", "network", "--limit", "60", "--max-iter", "1",
         "--n-kernels", "4", "--layer2-kernels", "3", "--quiet",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err


def _option_help(text, flag):
    """The help of ``flag`` in ``--help``'s text, on one line."""
    lines = text.split("\noptions:", 1)[1].splitlines()  # not the usage
    for i, line in enumerate(lines):
        words = line.split()
        if line.startswith("  -") and words and words[0].rstrip(",") == flag:
            block = [line]
            for more in lines[i + 1 :]:
                if more.startswith("  -") or not more.startswith("   "):
                    break
                block.append(more)
            return " ".join(" ".join(block).split())
    raise AssertionError(f"{flag} not in the help")


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_hostile_cli_help_shows_every_estimator_default(capsys, command):
    from calm_np import _cli_options

    with pytest.raises(SystemExit):
        _cli_options.build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    defaults = calm_np.ConvolutionalMixture().get_params()
    by_preset = _cli_options._preset_keys()
    skipped = {"warm_start", "init", "callback", "verbose"}
    for name in sorted(set(defaults) - skipped):
        help_text = _option_help(text, "--" + name.replace("_", "-"))
        own = _cli_options._shown(name, defaults[name])
        if name in by_preset:
            assert f"default: the --preset's, else {own}" in help_text, name
        else:
            assert f"default: {own} (no preset sets it)" in help_text, name
    assert "default: 1 (no preset sets it)" in _option_help(text, "--n-init")
    assert "default: auto (no preset sets it)" in _option_help(text, "--method")
    assert "else kmeans++" in _option_help(text, "--init")
    for flag, value in (("--backend", "numpy"), ("--dtype", "float32")):
        assert f"default: {value}" in _option_help(text, flag)


def test_cli_help_states_defaults_and_presets():
    text = evaluate_help()
    for name in evaluation.PRESETS:
        for dataset in ("digits", "fashion-mnist", "mnist", "stl10", "folder"):
            line = f"  {name} / {dataset}: "
            assert line + evaluation.get_preset(name, dataset).summary() in text
