"""The ``calm-np`` command line, end to end on tiny data, and its error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import calm_np
from calm_np import _cli, evaluation, preprocessing
from calm_np._cli import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _datafiles import write_mnist, write_stl10  # noqa: E402

# small and fast: a few kernels, a few iterations
TINY = ["--n-kernels", "4", "--kernel-size", "3", "--max-iter", "3", "--quiet"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    # a run without --out writes ./calm-np-output: keep it out of the checkout
    monkeypatch.chdir(tmp_path)


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, expected_status, *fragments):
    assert status == expected_status
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 50
    # not a blank canvas
    assert float(image[..., :3].std()) > 0.01


def test_kernel_grid_draws_every_kernel_in_its_tile(tmp_path):
    """The figure's one image: tile i at row i // cols, column i % cols,
    each kernel scaled to [0, 1] on its own, transparent gaps between."""
    pytest.importorskip("matplotlib")
    from calm_np import plots

    rng = np.random.default_rng(0)
    kernels = rng.standard_normal((5, 1, 3, 2)) * np.arange(1, 6)[:, None, None, None]
    tiles = plots._tiles(kernels)
    image = plots._mosaic(tiles, 2, 3)
    assert image.shape == (2 * 4 - 1, 3 * 3 - 1, 4)
    for i in range(5):
        y, x = (i // 3) * 4, (i % 3) * 3
        k = kernels[i, 0]
        expected = (k - k.min()) / (k.max() - k.min())
        np.testing.assert_allclose(image[y : y + 3, x : x + 2, 0], expected)
        assert (image[y : y + 3, x : x + 2, 3] == 1).all()
    assert (image[3, :, 3] == 0).all() and (image[:, 2, 3] == 0).all()
    assert (image[4:, 6:, 3] == 0).all()  # no sixth kernel
    path = plots.kernel_grid(kernels, tmp_path / "k.png", title="five")
    assert_png(path)


# ---------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------


def test_cli_fit_writes_model_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, _ = run(
        capsys, "fit", *TINY, "--limit", "120", "--dtype", "float64", "--out", out
    )
    assert status == 0
    assert "objective" in stdout
    for name in ("model.npz", "kernels.png", "log_likelihood.png", "summary.json"):
        assert (out / name).is_file(), name
    assert_png(out / "kernels.png")
    assert_png(out / "log_likelihood.png")

    model = calm_np.ConvolutionalMixture.load(out / "model.npz")
    assert model.kernels_.shape == (4, 1, 3, 3)
    assert model.kernels_.dtype == np.float64
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits"
    assert summary["n_train"] == 120
    assert summary["image_shape"] == [1, 8, 8]
    assert summary["backend"] == "numpy" and summary["dtype"] == "float64"
    assert summary["params"]["n_kernels"] == 4
    assert summary["params"]["kernel_size"] == 3
    assert summary["n_iter"] == model.n_iter_ == len(summary["seconds_per_iteration"])
    assert summary["final_objective"] == pytest.approx(model.lower_bound_)
    assert summary["objective_per_iteration"] == pytest.approx(model.lower_bounds_)
    assert all(t >= 0 for t in summary["seconds_per_iteration"])
    # the saved model describes the digits it was fitted on
    X, _ = calm_np.datasets.load_digits_images()
    assert np.isfinite(model.score(X[:10]))


def test_cli_evaluate_reports_accuracy_above_chance(tmp_path, capsys):
    out = tmp_path / "ev"
    status, stdout, _ = run(
        capsys,
        "evaluate",
        "--n-kernels", "8", "--kernel-size", "3", "--padding", "1",
        "--max-iter", "5", "--pooling", "2", "--quiet",
        "--limit", "300", "--out", out,
    )  # fmt: skip
    assert status == 0
    assert "test accuracy" in stdout
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["evaluation"]
    assert ev["n_features"] == 8 * 2 * 2
    assert ev["n_train"] == 300 and ev["n_test"] == 300
    # ten classes: chance is 0.1; 8 pooled kernels separate digits far better
    assert ev["accuracy"] > 0.6
    assert f"{ev['accuracy']:.4f}" in stdout
    # where the time went, step by step, in the summary and on stdout
    seconds = summary["seconds"]
    steps = ["load", "preprocess", "fit", "features", "probe"]
    assert list(seconds) == [*steps, "total"]
    assert all(seconds[step] >= 0 for step in steps)
    assert seconds["total"] == pytest.approx(sum(seconds[s] for s in steps), abs=0.01)
    assert seconds["fit"] == pytest.approx(summary["fit_seconds"], abs=0.05)
    assert all(f"{step} " in stdout for step in steps)


def test_cli_evaluate_loaded_model_gives_same_accuracy(tmp_path, capsys):
    args = ["--limit", "200", "--pooling", "2"]
    status, _, _ = run(capsys, "evaluate", *TINY, *args, "--out", tmp_path / "a")
    assert status == 0
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    status, _, _ = run(
        capsys,
        "evaluate",
        "--model", tmp_path / "a" / "model.npz",
        *args, "--quiet", "--out", tmp_path / "b",
    )  # fmt: skip
    assert status == 0
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["model_loaded_from"].endswith("model.npz")
    assert second["evaluation"]["accuracy"] == first["evaluation"]["accuracy"]


def test_cli_show_draws_saved_model(tmp_path, capsys):
    run(capsys, "fit", *TINY, "--limit", "50", "--out", tmp_path)
    status, stdout, _ = run(capsys, "show", tmp_path / "model.npz")
    assert status == 0
    png = tmp_path / "model_kernels.png"
    assert "objective" in stdout and "parameters:" in stdout
    assert stdout.strip().splitlines()[-1] == str(png)
    assert_png(png)
    status, _, _ = run(
        capsys, "show", tmp_path / "model.npz", "--out", tmp_path / "k.png"
    )
    assert status == 0
    assert_png(tmp_path / "k.png")


def test_cli_warm_start_continues_from_saved_model(tmp_path, capsys):
    run(capsys, "fit", *TINY, "--limit", "100", "--out", tmp_path / "a")
    status, _, _ = run(
        capsys,
        "fit", "--warm-start", tmp_path / "a" / "model.npz",
        "--max-iter", "2", "--limit", "100", "--quiet", "--out", tmp_path / "b",
    )  # fmt: skip
    assert status == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["params"]["n_kernels"] == 4 and b["params"]["kernel_size"] == 3
    # EM is monotone: continuing never lowers the objective
    assert b["final_objective"] >= a["final_objective"] - 1e-4


def test_cli_init_from_model_file(tmp_path, capsys):
    run(capsys, "fit", *TINY, "--limit", "60", "--out", tmp_path / "a")
    status, _, _ = run(
        capsys,
        "fit", *TINY, "--init", tmp_path / "a" / "model.npz",
        "--max-iter", "0", "--limit", "60", "--out", tmp_path / "b",
    )  # fmt: skip
    assert status == 0
    a = calm_np.ConvolutionalMixture.load(tmp_path / "a" / "model.npz")
    b = calm_np.ConvolutionalMixture.load(tmp_path / "b" / "model.npz")
    np.testing.assert_array_equal(a.kernels_, b.kernels_)


def test_cli_reads_mnist_idx_files(tmp_path, capsys):
    labels = write_mnist(tmp_path / "mnist", n_train=40, n_test=20)
    status, stdout, _ = run(
        capsys,
        "evaluate", "--dataset", "mnist", "--data-dir", tmp_path / "mnist",
        "--n-kernels", "4", "--kernel-size", "5", "--max-iter", "3",
        "--pooling", "2", "--batch-size", "16", "--quiet", "--out", tmp_path / "o",
    )  # fmt: skip
    assert status == 0, stdout
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_train"] == len(labels["train"])
    assert summary["evaluation"]["n_test"] == len(labels["t10k"])
    assert summary["image_shape"] == [1, 28, 28]
    # the class is where a bright square sits: pooled features see it
    assert summary["evaluation"]["accuracy"] >= 0.9


def test_cli_fashion_mnist_data_dir_and_limit(tmp_path, capsys):
    write_mnist(tmp_path / "fm", n_train=30, n_test=10, compress=False)
    status, _, _ = run(
        capsys,
        "fit", "--dataset", "fashion-mnist", "--data-dir", tmp_path / "fm",
        *TINY, "--limit", "12", "--out", tmp_path / "o",
    )  # fmt: skip
    assert status == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["n_train"] == 12


def test_cli_fit_limit_fits_on_a_subset_and_probes_all(tmp_path, capsys):
    write_mnist(tmp_path / "fm", n_train=30, n_test=10)
    status, _, _ = run(
        capsys,
        "evaluate", "--dataset", "fashion-mnist", "--data-dir", tmp_path / "fm",
        *TINY, "--fit-limit", "8", "--out", tmp_path / "o",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_fit"] == 8 and summary["n_train"] == 30
    assert summary["evaluation"]["n_train"] == 30


def test_cli_reads_stl10_binary_files(tmp_path, capsys):
    folder = write_stl10(tmp_path / "stl10_binary", n_train=6, n_test=4)
    status, _, _ = run(
        capsys,
        "evaluate", "--dataset", "stl10", "--data-dir", folder,
        "--n-kernels", "2", "--kernel-size", "5", "--max-iter", "2",
        "--batch-size", "3", "--quiet", "--out", tmp_path / "o",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["image_shape"] == [3, 96, 96]
    assert summary["preprocess"] == evaluation.PRESETS["best"]["stl10"]["preprocess"]
    model = calm_np.ConvolutionalMixture.load(tmp_path / "o" / "model.npz")
    assert model.kernels_.shape == (2, 3, 5, 5)
    assert_png(tmp_path / "o" / "kernels.png")  # RGB tiles


@pytest.mark.parametrize(
    "preprocess", ["local", "standardize", "per-image", "zca", "none"]
)
def test_cli_preprocess_options(tmp_path, capsys, preprocess):
    status, _, _ = run(
        capsys,
        "fit", *TINY, "--limit", "80", "--preprocess", preprocess,
        "--out", tmp_path,
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preprocess"] == preprocess


def test_local_contrast_normalizes_each_window():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(2, 1, 12, 12)) * np.array([1.0, 0.1])[:, None, None, None]
    out = preprocessing.local_contrast(X, (5, 5), eps=0.0)
    # scale invariant (the second image is the first's pattern, dimmer) ...
    X2 = X.copy()
    X2[1] = X2[0] * 0.1
    out2 = preprocessing.local_contrast(X2, (5, 5), eps=0.0)
    np.testing.assert_allclose(out2[0], out2[1], rtol=1e-9, atol=1e-12)
    # ... and each interior pixel is its window's z-score
    y, x = 6, 6
    window = X[0, 0, y - 2 : y + 3, x - 2 : x + 3]
    centred = (X[0, 0] - _box_mean(X[0, 0], 5))[y - 2 : y + 3, x - 2 : x + 3]
    expected = (X[0, 0, y, x] - window.mean()) / np.sqrt((centred**2).mean())
    assert out[0, 0, y, x] == pytest.approx(expected, rel=1e-9)
    assert out.shape == X.shape


def _box_mean(image, size):
    r = size // 2
    padded = np.pad(image, r, mode="reflect")  # numpy "reflect" = scipy "mirror"
    out = np.zeros_like(image)
    for dy in range(size):
        for dx in range(size):
            out += padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out / size**2


def test_cli_pooling_pyramid_concatenates_the_grids(tmp_path, capsys):
    out = tmp_path / "ev"
    status, _, _ = run(
        capsys,
        "evaluate",
        "--n-kernels", "8", "--kernel-size", "3", "--max-iter", "2",
        "--pooling", "1+2x3", "--quiet", "--limit", "200", "--out", out,
    )  # fmt: skip
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["n_features"] == 8 * (1 + 2 * 3)


def test_cli_best_presets_use_the_measured_readout():
    best = evaluation.PRESETS["best"]["mnist"]
    best256 = evaluation.PRESETS["best256"]["mnist"]
    assert best256["n_kernels"] * best256["pooling"] ** 2 <= 256
    for preset in (best, best256, evaluation.PRESETS["best1152"]["mnist"]):
        params = {
            k: v for k, v in preset.items() if k not in ("preprocess", "fit_limit", "C")
        }
        calm_np.ConvolutionalMixture(**params)._check_params()  # valid settings


def test_cli_probe_C_comes_from_the_preset_unless_given():
    from calm_np import _cli_options

    parser = _cli_options.build_parser()

    def probe_C(*argv):
        return _cli_options._resolve_settings(parser.parse_args(argv))[1]["C"]

    best = evaluation.PRESETS["best"]["mnist"]["C"]
    assert probe_C("evaluate", "--dataset", "fashion-mnist") == best != 1.0
    assert probe_C("evaluate", "--dataset", "fashion-mnist", "--C", "2") == 2.0
    assert probe_C("evaluate", "--dataset", "digits") == 1.0
    fashion256 = ("--dataset", "fashion-mnist", "--preset", "best256")
    best256 = evaluation.PRESETS["best256"]["mnist"].get("C", 1.0)
    assert probe_C("evaluate", *fashion256) == best256
    paper = ("--dataset", "fashion-mnist", "--preset", "paper")
    assert probe_C("evaluate", *paper) == 1.0


def test_cli_paper_preset(tmp_path, capsys):
    status, _, _ = run(
        capsys,
        "fit", "--preset", "paper", "--max-iter", "1", "--n-kernels", "3",
        "--limit", "40", "--quiet", "--out", tmp_path,
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    paper = evaluation.PRESETS["paper"]["digits"]
    assert summary["params"]["padding"] == paper["padding"]
    assert summary["params"]["n_kernels"] == 3  # the option wins over the preset
    assert summary["params"]["pooling"] == 1


def test_cli_torch_backend(tmp_path, capsys):
    pytest.importorskip("torch")
    status, _, _ = run(
        capsys,
        "evaluate", *TINY, "--limit", "80", "--backend", "torch",
        "--device", "cpu", "--out", tmp_path,
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["device"] == "cpu"
    assert 0.0 <= summary["evaluation"]["accuracy"] <= 1.0


def test_cli_every_estimator_parameter_has_an_option():
    parser = _cli.build_parser()
    internal = {"callback", "verbose"}  # the CLI drives progress itself
    for command in ("fit", "evaluate"):
        sub = parser._subparsers._group_actions[0].choices[command]
        options = {s for a in sub._actions for s in a.option_strings}
        for name in set(calm_np.ConvolutionalMixture().get_params()) - internal:
            assert "--" + name.replace("_", "-") in options, (command, name)


def test_cli_progress_lines_go_to_stderr(tmp_path, capsys):
    status, out, err = run(
        capsys,
        "fit", "--n-kernels", "2", "--kernel-size", "3", "--max-iter", "2",
        "--limit", "30", "--out", tmp_path,
    )  # fmt: skip
    assert status == 0
    assert "iter" in err and "iter " not in out
    assert len(out.strip().splitlines()) == 1  # the result line only


# ---------------------------------------------------------------------------
# user errors: one line on stderr, non-zero status, no traceback
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["fit", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["evaluate", "--dataset", "sample-images"], "invalid choice"),
        (["fit", "--n-kernels", "0"], "--n-kernels"),
        (["fit", "--n-kernels", "many"], "expected an integer"),
        (["fit", "--kernel-size", "3x3x3"], "--kernel-size"),
        (["fit", "--kernel-size", "0"], "must be >= 1"),
        (["fit", "--padding", "-1"], "--padding"),
        (["fit", "--tol", "-1"], "--tol"),
        (["fit", "--tol", "nan"], "--tol"),
        (["fit", "--reg-kernels", "x"], "--reg-kernels"),
        (["fit", "--batch-size", "0"], "--batch-size"),
        (["fit", "--pooling", "0"], "--pooling"),
        (["fit", "--max-iter", "-2"], "--max-iter"),
        (["fit", "--method", "winograd"], "--method"),
        (["fit", "--features", "max"], "--features"),
        (["fit", "--backend", "jax"], "--backend"),
        (["fit", "--dtype", "float16"], "--dtype"),
        (["fit", "--preprocess", "pca"], "--preprocess"),
        (["evaluate", "--C", "0"], "--C"),
        (["evaluate", "--pooling", "2+x"], "--pooling"),
        (["show"], "MODEL"),
        (["frobnicate"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_cli_bad_command_line_is_one_line_status_2(capsys, args, fragment):
    status, _, err = run(capsys, *args)
    assert_one_line_error(status, err, 2, fragment)


def test_cli_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    status, _, err = run(
        capsys, "fit", "--dataset", "fashion-mnist", "--data-dir", missing, "-q"
    )
    assert_one_line_error(status, err, 1, str(missing))
    assert not (tmp_path / _cli.DEFAULT_OUT).exists()  # nothing written on error


def test_cli_data_folder_without_files_names_them(tmp_path, capsys):
    status, _, err = run(
        capsys, "evaluate", "--dataset", "mnist", "--data-dir", tmp_path, "-q"
    )
    assert_one_line_error(status, err, 1, "train-images-idx3-ubyte")
    status, _, err = run(
        capsys, "fit", "--dataset", "stl10", "--data-dir", tmp_path, "-q"
    )
    assert_one_line_error(status, err, 1, "train_X.bin")


@pytest.mark.parametrize("dataset", ["mnist", "stl10"])
def test_cli_dataset_needs_data_dir(capsys, dataset):
    status, _, err = run(capsys, "fit", "--dataset", dataset, "-q")
    assert_one_line_error(status, err, 1, "--data-dir")


def test_cli_damaged_data_file(tmp_path, capsys):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    status, _, err = run(
        capsys, "fit", "--dataset", "mnist", "--data-dir", tmp_path, "-q"
    )
    assert_one_line_error(status, err, 1, "truncated")


def test_cli_cupy_without_gpu(capsys):
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present: --backend cupy is valid here")
    except Exception:
        pass
    status, _, err = run(capsys, "fit", "--backend", "cupy", "-q")
    assert_one_line_error(status, err, 1, "--backend cupy")


def test_cli_numpy_backend_refuses_gpu_device(capsys):
    status, _, err = run(capsys, "fit", "--device", "cuda", "-q")
    assert_one_line_error(status, err, 1, "--device")


def test_cli_kernel_larger_than_images(tmp_path, capsys):
    status, _, err = run(capsys, "fit", "--kernel-size", "20", "--out", tmp_path, "-q")
    assert_one_line_error(status, err, 1, "kernel")


def test_cli_zca_refuses_large_images(tmp_path, capsys):
    folder = write_stl10(tmp_path / "stl", n_train=3, n_test=2)
    status, _, err = run(
        capsys,
        "fit", "--dataset", "stl10", "--data-dir", folder,
        "--preprocess", "zca", "--out", tmp_path / "o", "-q",
    )  # fmt: skip
    assert_one_line_error(status, err, 1, "--preprocess per-image")


def test_cli_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    status, _, err = run(capsys, "fit", *TINY, "--out", target)
    assert_one_line_error(status, err, 1, "--out")


def test_cli_show_missing_and_foreign_files(tmp_path, capsys):
    status, _, err = run(capsys, "show", tmp_path / "absent.npz")
    assert_one_line_error(status, err, 1, "absent.npz")
    foreign = tmp_path / "other.npz"
    np.savez(foreign, a=np.zeros(3))
    status, _, err = run(capsys, "show", foreign)
    assert_one_line_error(status, err, 1, "not a calm_np model")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    status, _, err = run(capsys, "show", garbage)
    assert_one_line_error(status, err, 1, "garbage.npz")


def test_cli_init_not_a_method_nor_model(capsys, tmp_path):
    status, _, err = run(capsys, "fit", "--init", "kmeans", "--out", tmp_path)
    assert_one_line_error(status, err, 1, "--init")


def test_cli_warm_start_shape_conflict(tmp_path, capsys):
    run(capsys, "fit", *TINY, "--limit", "40", "--out", tmp_path / "a")
    status, _, err = run(
        capsys,
        "fit", "--warm-start", tmp_path / "a" / "model.npz",
        "--kernel-size", "5", "--out", tmp_path / "b", "-q",
    )  # fmt: skip
    assert_one_line_error(status, err, 1, "--kernel-size")


def test_cli_loaded_model_channel_mismatch(tmp_path, capsys):
    run(capsys, "fit", *TINY, "--limit", "40", "--out", tmp_path / "a")
    folder = write_stl10(tmp_path / "stl", n_train=3, n_test=2)
    status, _, err = run(
        capsys,
        "evaluate", "--model", tmp_path / "a" / "model.npz",
        "--dataset", "stl10", "--data-dir", folder, "--out", tmp_path / "b", "-q",
    )  # fmt: skip
    assert_one_line_error(status, err, 1, "channel")


# ---------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------


def _python_m(*args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="error")
    env.pop("CALM_NP_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "calm_np", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_python_m_calm_np_runs_and_fails_cleanly(tmp_path):
    done = _python_m("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "fit" in done.stdout and "evaluate" in done.stdout
    done = _python_m("fit", "--dataset", "mnist", "-q", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "--data-dir" in done.stderr


def test_debug_environment_variable_shows_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CALM_NP_DEBUG", "1")
    with pytest.raises(_cli.UserError):
        main(["fit", "--dataset", "mnist", "-q", "--out", str(tmp_path)])


def test_console_script_is_declared():
    from importlib.metadata import PackageNotFoundError, entry_points

    try:
        scripts = entry_points(group="console_scripts")
    except PackageNotFoundError:  # pragma: no cover
        pytest.skip("calm_np is not installed")
    ours = [ep for ep in scripts if ep.name == "calm-np"]
    if not ours:
        pytest.skip("calm_np is not installed with its entry points")
    assert ours[0].value == "calm_np.__main__:main"
    assert ours[0].load() is main


# ---------------------------------------------------------------------------
# stacked layers
# ---------------------------------------------------------------------------


def test_cli_evaluate_fits_a_two_layer_network(tmp_path, capsys):
    out = tmp_path / "net"
    status, stdout, _ = run(
        capsys, "evaluate", *TINY, "--limit", "150", "--layers", "2",
        "--layer2-kernels", "5", "--layer2-kernel-size", "2", "--pool-size", "2",
        "--padding", "1", "--pooling", "2", "--out", out,
    )  # fmt: skip
    assert status == 0
    network = calm_np.ConvolutionalMixtureNetwork.load(out / "model.npz")
    first, second = network.layers_
    assert second.kernels_.shape == (5, 4, 2, 2)
    assert network.pool_size == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_iter"] == [first.n_iter_, second.n_iter_]
    assert summary["final_objective"] == pytest.approx(
        [first.lower_bound_, second.lower_bound_]
    )
    assert [p["n_kernels"] for p in summary["params"]["layers"]] == [4, 5]
    n_features = network.n_features_
    assert n_features == 4 * 4 + 5 * 4
    assert summary["evaluation"]["n_features"] == n_features
    assert f"{n_features} features" in stdout
    assert_png(out / "kernels.png")  # layer 1's kernels
    # a saved network is read back by --model and show
    status, _, _ = run(
        capsys, "evaluate", "--model", out / "model.npz", "--limit", "150",
        "--padding", "1", "--quiet", "--out", tmp_path / "again",
    )  # fmt: skip
    assert status == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["evaluation"]["n_features"] == n_features
    assert again["evaluation"]["accuracy"] == summary["evaluation"]["accuracy"]
    png = tmp_path / "shown.png"
    assert run(capsys, "show", out / "model.npz", "--out", png)[0] == 0
    assert_png(png)
    # the maps cached (auto, the default) or recomputed on every pass: one network
    status, _, _ = run(
        capsys, "evaluate", *TINY, "--limit", "150", "--layers", "2",
        "--layer2-kernels", "5", "--layer2-kernel-size", "2", "--pool-size", "2",
        "--padding", "1", "--pooling", "2", "--cache", "none", "--quiet",
        "--out", tmp_path / "uncached",
    )  # fmt: skip
    assert status == 0
    uncached = json.loads((tmp_path / "uncached" / "summary.json").read_text())
    assert uncached["final_objective"] == pytest.approx(summary["final_objective"])
    assert uncached["params"]["cache"] is None and summary["params"]["cache"] == "auto"


def test_cli_network_preset_and_refusals(tmp_path, capsys):
    assert evaluation.NETWORK_PRESETS["network"]["layers"] == 2
    status, _, err = run(
        capsys, "fit", *TINY, "--limit", "40", "--preset", "network",
        "--layer2-kernel-size", "9", "--out", tmp_path / "a",
    )  # fmt: skip
    assert_one_line_error(status, err, 1, "layers[1]: kernel size (9, 9)")
    model = tmp_path / "one.npz"
    assert run(capsys, "fit", *TINY, "--limit", "40", "--out", tmp_path / "b")[0] == 0
    (tmp_path / "b" / "model.npz").rename(model)
    status, _, err = run(
        capsys, "fit", *TINY, "--layers", "2", "--warm-start", model,
        "--out", tmp_path / "c",
    )  # fmt: skip
    assert_one_line_error(status, err, 1, "--layers > 1 fits a new network")
    status, _, err = run(capsys, "fit", "--layers", "0")
    assert status == 2 and "--layers" in err


def test_cli_init_model_sets_the_shape_unless_given(tmp_path, capsys):
    """--init MODEL.npz without --n-kernels/--kernel-size takes the model's."""
    base = ["fit", "--dataset", "digits", "--limit", "60", "--max-iter", "1", "--quiet"]
    base += ["--padding", "1"]  # the preset's 2 is beyond kernel_size - 1 = 1
    shape = ["--n-kernels", "3", "--kernel-size", "2"]
    status, _, err = run(capsys, *base, *shape, "--out", tmp_path / "a")
    assert status == 0, err
    a = tmp_path / "a" / "model.npz"
    status, _, err = run(capsys, *base, "--init", a, "--out", tmp_path / "b")
    assert status == 0, err
    b = calm_np.ConvolutionalMixture.load(tmp_path / "b" / "model.npz")
    assert b.kernels_.shape == (3, 1, 2, 2)
    for given in (["--n-kernels", "4"], ["--kernel-size", "3"]):  # given: kept
        status, _, err = run(
            capsys, *base, "--init", a, *given, "--out", tmp_path / "c"
        )
        assert_one_line_error(status, err, 1, "init has shape (3, 1, 2, 2)")


def test_cli_a_network_file_is_refused_where_one_layer_is_expected(tmp_path, capsys):
    base = ["fit", "--dataset", "digits", "--limit", "60", "--max-iter", "1", "--quiet"]
    net = ["--n-kernels", "3", "--kernel-size", "2", "--padding", "1", "--layers", "2"]
    net += ["--layer2-kernel-size", "2"]  # layer 1's maps pooled are 4x4
    status, _, err = run(capsys, *base, *net, "--out", tmp_path / "n")
    assert status == 0, err
    for flag in ("--warm-start", "--init"):
        status, _, err = run(
            capsys, *base, flag, tmp_path / "n" / "model.npz", "--out", tmp_path / "x"
        )
        assert_one_line_error(status, err, 1, "is a 2-layer network", "single-layer")


@pytest.mark.parametrize("text", ["2+", "+3", "2++3"])
def test_cli_pooling_with_an_empty_grid_is_refused_by_name(capsys, text):
    status, _, err = run(capsys, "fit", "--pooling", text)
    assert_one_line_error(status, err, 2, "--pooling", "grids joined by +", repr(text))
