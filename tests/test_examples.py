"""The examples run end to end on tiny synthetic files in the real formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _datafiles import write_mnist, write_stl10  # noqa: E402

# tiny runs stop at a few iterations on purpose, on a handful of images
pytestmark = [
    pytest.mark.filterwarnings("ignore::calm_np.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::calm_np.DeadKernelWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_example(name):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write their figures to ./<name>-output


def test_mnist_example_on_idx_files(tmp_path, capsys):
    write_mnist(tmp_path / "mnist", n_train=40, n_test=20, compress=True)
    mnist = load_example("mnist")
    accuracy = mnist.main(
        [
            "--data-dir", str(tmp_path / "mnist"), "--epochs", "3",
            "--n-kernels", "4", "--kernel-size", "8", "--batch-size", "16",
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "MNIST: 40 training and 20 test images" in out
    assert "test accuracy" in out
    assert 0.0 <= accuracy <= 1.0
    for name in ("kernels.png", "log_likelihood.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC


def test_mnist_example_defaults_to_fashion_mnist(tmp_path, capsys):
    write_mnist(tmp_path / "fashion", n_train=30, n_test=10, compress=False)
    mnist = load_example("mnist")
    args = mnist.parse_args(["--fashion-dir", str(tmp_path / "fashion")])
    # the paper's setup is the default
    assert (args.n_kernels, args.kernel_size, args.padding) == (64, 20, 2)
    assert (args.batch_size, args.epochs) == (1000, 15)
    mnist.main(
        [
            "--fashion-dir", str(tmp_path / "fashion"), "--limit", "12",
            "--epochs", "2", "--n-kernels", "3",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Fashion-MNIST: 12 training and 10 test images" in out
    assert (tmp_path / "mnist-output" / "kernels.png").is_file()


def test_stl10_example_streams_train_and_unlabeled_with_folds(tmp_path, capsys):
    folder = write_stl10(tmp_path / "stl10_binary", n_train=12, n_test=8, folds=2)
    stl10 = load_example("stl10")
    args = stl10.parse_args(["--data-dir", str(folder)])
    assert (args.n_kernels, args.kernel_size, args.batch_size) == (200, 15, 200)
    accuracy = stl10.main(
        [
            "--data-dir", str(folder), "--epochs", "2", "--n-kernels", "3",
            "--kernel-size", "9", "--batch-size", "5", "--pooling", "2",
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    # 12 labelled + 10 unlabeled images in the fit; both folds evaluated
    assert "fitting on 22 images, 8 test images, 2 folds" in out
    assert "over 2 folds" in out
    assert 0.0 <= accuracy <= 1.0
    assert (tmp_path / "out" / "kernels.png").read_bytes()[:8] == PNG_MAGIC


def test_stl10_example_whitened_batches_cover_each_split(tmp_path):
    folder = write_stl10(tmp_path / "stl10_binary", n_train=7, n_test=2)
    stl10 = load_example("stl10")
    from calm_np import datasets

    train, _ = datasets.load_stl10(folder, "train")
    unlabeled, _ = datasets.load_stl10(folder, "unlabeled")
    batches = stl10.Whitened([(train, 7), (unlabeled, 4)], 3, lambda X: X)
    assert len(batches) == 3 + 2
    for _ in range(2):  # re-iterable: EM reads it once per epoch
        seen = list(batches)
        assert [len(b) for b in seen] == [3, 3, 1, 3, 1]
        stacked = np.concatenate(seen)
        assert stacked.dtype == np.float32
        # whitened per image and channel
        np.testing.assert_allclose(stacked.mean(axis=(2, 3)), 0, atol=1e-5)
        np.testing.assert_allclose(stacked.std(axis=(2, 3)), 1, atol=1e-3)


def test_stl10_example_without_unlabeled(tmp_path, capsys):
    folder = write_stl10(tmp_path / "stl10_binary", n_train=6, n_test=4, folds=1)
    stl10 = load_example("stl10")
    stl10.main(
        [
            "--data-dir", str(folder), "--no-unlabeled", "--epochs", "1",
            "--n-kernels", "2", "--kernel-size", "9", "--batch-size", "4",
        ]
    )  # fmt: skip
    assert "fitting on 6 images" in capsys.readouterr().out


def test_network_example_fits_two_layers_and_draws_both(tmp_path, capsys):
    write_mnist(tmp_path / "fashion", n_train=30, n_test=12, compress=False)
    example = load_example("network_fashion_mnist")
    args = example.parse_args([])
    assert (args.limit, args.test_limit, args.full) == (5000, 2000, False)
    assert (tuple(args.n_kernels), tuple(args.kernel_size)) == ((64, 128), (7, 3))
    accuracy = example.main(
        [
            "--data-dir", str(tmp_path / "fashion"), "--limit", "20",
            "--test-limit", "10", "--n-kernels", "4", "5", "--epochs", "2",
            "--batch-size", "8", "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Fashion-MNIST: 20 training and 10 test images" in out
    assert "layer 2: 5 kernels (4, 3, 3)" in out
    assert f"{4 * 9 + 5 * 9} features, linear-probe test accuracy" in out
    assert 0.0 <= accuracy <= 1.0
    for name in ("layer1_kernels.png", "layer2_channels.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    # each layer-2 tile is the energy of its 4 input channels on a 2x2 square
    kernels = np.arange(5 * 4 * 9, dtype=float).reshape(5, 4, 3, 3)
    tiles = example.channel_energy(kernels)
    assert tiles.shape == (5, 1, 2, 2)
    assert tiles[1, 0, 0, 1] == (kernels[1, 1] ** 2).sum()


def test_quickstart_example_runs(capsys):
    load_example("quickstart").main()
    out = capsys.readouterr().out
    assert "objective never went down: True" in out
    assert "accuracy" in out
