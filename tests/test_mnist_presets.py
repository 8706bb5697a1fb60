"""Presets on real MNIST digits: ``best`` has its own entry (issue 12,
benchmarks/mnist_small.py); every preset still resolves for ``mnist``."""

import calm_np
from calm_np import evaluation, preprocessing

NOT_ESTIMATOR = ("preprocess", "fit_limit", "C")


def _valid(settings):
    assert settings["preprocess"] in preprocessing.PREPROCESSORS
    params = {k: v for k, v in settings.items() if k not in NOT_ESTIMATOR}
    calm_np.ConvolutionalMixture(**params)._check_params()


def test_every_preset_resolves_for_mnist():
    for name in evaluation.PRESETS:
        settings = evaluation.preset(name, "mnist")
        _valid(settings)
        settings["n_kernels"] = -1  # a copy: the next call is unchanged
        assert evaluation.preset(name, "mnist")["n_kernels"] > 0


def test_best_on_mnist_is_its_own_entry_and_fashion_keeps_its_own():
    digits = evaluation.preset("best", "mnist")
    fashion = evaluation.preset("best", "fashion-mnist")
    assert digits == evaluation._DATASET_PRESETS["best", "mnist"]
    assert fashion == evaluation.PRESETS["best"]["mnist"]
    assert digits != fashion
    _valid(digits)


def test_cli_reads_the_mnist_entry():
    from calm_np import _cli_options

    parser = _cli_options.build_parser()
    args = parser.parse_args(["evaluate", "--dataset", "mnist"])
    params, extras = _cli_options._resolve_settings(args)
    digits = evaluation.preset("best", "mnist")
    assert params["features"] == digits["features"]
    assert params["n_kernels"] == digits["n_kernels"]
    assert extras["C"] == digits.get("C", 1.0)
    assert extras["preprocess"] == digits["preprocess"]
