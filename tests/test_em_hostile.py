"""Hostile input to the model's math (``_em``): the public functions
(``log_joint``, ``posterior``, ``log_likelihood``, ``sufficient_statistics``)
and the objective.

Bad arrays are refused by name; kernels, variances and ``reg_kernels`` whose
terms overflow the dtype are refused with the quantity to change, and large
but finite models still go through.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from _hostile import LIBS, lib_array, model, quiet_fit, small

import calm_np
from calm_np import ConvolutionalMixture

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 1, 8, 8))


# -- the public functions ------------------------------------------
FUNCS = ["log_joint", "posterior", "log_likelihood", "sufficient_statistics"]


KERNELS = RNG.standard_normal((3, 1, 3, 3))


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


FUNC_CASES = [
    (dict(X=X[0, 0]), ValueError, "X must have shape"),
    (dict(X=_nan(X)), ValueError, "X contains NaN"),
    (dict(X=X.astype(np.complex64)), TypeError, "X has complex dtype"),
    (
        dict(X=(X * 1e19).astype(np.float32), kernels=KERNELS.astype(np.float32)),
        ValueError,
        "X has values up to",
    ),
    (dict(kernels=KERNELS[0, 0]), ValueError, "kernels must have shape"),
    (dict(kernels=np.ones((3, 2, 3, 3))), ValueError, r"kernels have 2 channel"),
    (dict(kernels=_nan(KERNELS)), ValueError, "kernels contains NaN"),
    (dict(kernels=np.ones((3, 1, 9, 9))), ValueError, "kernel size .* larger"),
    (dict(log_weights=np.zeros(2)), ValueError, r"log_weights must have shape"),
    (dict(log_weights=np.zeros(3)), ValueError, "log_weights must be log-prob"),
    (dict(log_weights=np.full(3, np.nan)), ValueError, "log_weights contains NaN"),
    (dict(log_weights=np.zeros(3, complex)), TypeError, "log_weights must be real"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding="same"), TypeError, "padding must be an int or a pair"),
    (dict(method="magic"), ValueError, "method must be one of"),
    (dict(latent="pixel"), ValueError, "latent must be one of"),
    (dict(variance=0.0), ValueError, "variance must be a finite number > 0"),
    (dict(variance=-1.0), ValueError, "variance must be a finite number > 0"),
    (dict(variance=math.nan), ValueError, "variance must be a finite number > 0"),
    (dict(variance=math.inf), ValueError, "variance must be a finite number > 0"),
    (dict(variance="1"), TypeError, "variance must be a real number"),
    (dict(variance=True), TypeError, "variance must be a real number"),
    (dict(variance=None), TypeError, "variance must be a real number"),
    (dict(whitening=(np.zeros(9), np.eye(9), 1.0)), ValueError, "whitening needs"),
    (
        dict(latent="patch", method="fft", whitening=(np.zeros(9), np.eye(9), 1.0)),
        ValueError,
        "whitening cannot run with method='fft'",
    ),
    (dict(latent="patch", whitening=(np.zeros(9), np.eye(9), 0.0)), ValueError, "eps"),
    (
        dict(latent="patch", whitening=(np.zeros(9), np.full((9, 9), np.nan), 1.0)),
        ValueError,
        "whitening contains NaN",
    ),
]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("case, exc, match", FUNC_CASES)
def test_functions_refuse_bad_input(lib, func, case, exc, match):
    args = dict(X=X[:4], kernels=KERNELS, log_weights=None)
    args.update(case)
    if lib == "torch" and any(
        np.asarray(v).dtype.kind == "c" for v in case.values() if hasattr(v, "dtype")
    ):
        pytest.skip("the complex case is covered on NumPy")
    Xa = lib_array(args.pop("X"), lib)
    Ka = lib_array(args.pop("kernels"), lib)
    if args["log_weights"] is not None:
        args["log_weights"] = lib_array(args["log_weights"], lib)
    with pytest.raises(exc, match=match):
        getattr(calm_np, func)(Xa, Ka, **args)


def test_fit_never_ends_with_a_non_finite_objective():
    # just below the scale limit: the fit ends finite
    m = quiet_fit(model(), (X * 1e17).astype(np.float32))
    assert math.isfinite(m.lower_bound_)
    assert all(math.isfinite(b) for b in m.lower_bounds_)
    # and a non-finite objective is an error, whatever produced it
    from calm_np._em import SufficientStatistics
    from calm_np._mstep import objective

    stats = SufficientStatistics(np.ones(3), np.ones((3, 1, 3, 3)), -np.inf, 4)
    with pytest.raises(ValueError, match="objective is -inf .*rescale X"):
        objective(stats, KERNELS)


# ten images and three kernels, for the cases below
X10 = RNG.standard_normal((10, 1, 8, 8))
K = RNG.standard_normal((3, 1, 3, 3))


def fit(model, data=X10):
    return quiet_fit(model, data)


# -- nothing produces NaN silently ------------------------------------------------


@pytest.mark.parametrize(
    "kernels, variance, dtype",
    [
        (K * 1e160, 1.0, np.float64),  # ||mu||^2 overflows float64
        (K * 1e19, 1.0, np.float32),  # ... float32
        (K, 1e-310, np.float64),  # 1/sigma^2 overflows
        (K, 1e-38, np.float32),  # the scaled log joint overflows float32
    ],
)
@pytest.mark.parametrize("func", [calm_np.log_joint, calm_np.posterior])
def test_overflowing_kernels_or_variance_are_refused(func, kernels, variance, dtype):
    with pytest.raises(
        ValueError, match="log-joint terms up to .* rescale the kernels"
    ):
        func(X10.astype(dtype), kernels.astype(dtype), variance=variance)


def test_the_overflow_bound_still_lets_large_finite_models_through():
    """Kernels of norm 1e150 (squares 1e300) stay inside float64: no error, no NaN."""
    P = calm_np.posterior(X10, K * 1e150)
    assert np.isfinite(P).all()
    assert np.isfinite(calm_np.log_joint(X10, K * 1e150)).all()


def test_torch_float32_overflow_is_refused():
    torch = pytest.importorskip("torch")
    Xt = torch.asarray(X10, dtype=torch.float32)
    with pytest.raises(ValueError, match="torch.float32's range"):
        calm_np.posterior(Xt, torch.asarray(K * 1e19, dtype=torch.float32))


# -- clear errors where a NumPy error or a MemoryError came out ---------------------


def test_statistics_add_up_with_sum_and_refuse_other_kernels():
    a = calm_np.sufficient_statistics(X10[:5], K)
    b = calm_np.sufficient_statistics(X10[5:], K)
    total = sum([a, b])
    whole = calm_np.sufficient_statistics(X10, K)
    np.testing.assert_allclose(total.counts, whole.counts, rtol=1e-12)
    np.testing.assert_allclose(total.sums, whole.sums, rtol=1e-12, atol=1e-12)
    other = calm_np.sufficient_statistics(X10, K[:2])
    with pytest.raises(ValueError, match="statistics of kernels"):
        a + other


def test_statistics_of_two_libraries_do_not_add():
    torch = pytest.importorskip("torch")
    a = calm_np.sufficient_statistics(X10, K)
    b = calm_np.sufficient_statistics(torch.asarray(X10), torch.asarray(K))
    with pytest.raises(TypeError, match="numpy.*torch|torch.*numpy"):
        a + b


@pytest.mark.parametrize(
    "data, dtype_name",
    [(X10 * 1e-160, "float64"), ((X10 * 1e-20).astype(np.float32), "float32")],
)
def test_a_learned_variance_out_of_the_dtypes_range_is_named(data, dtype_name):
    """Data so small that sigma^2 underflows: the error says learn_variance."""
    m = small(learn_variance=True, random_state=0)
    with pytest.raises(ValueError, match=f"learn_variance: .* out of {dtype_name}"):
        fit(m, data)


def test_a_non_finite_objective_names_the_dtype_and_not_only_large_images():
    with pytest.raises(ValueError, match="not finite\\) in float64: .* too small"):
        fit(
            ConvolutionalMixture(2, kernel_size=2, max_iter=1),
            np.full((200, 1, 4, 4), 3e153),
        )


# -- large but finite models go through; an overflowing prior penalty is named ------


def test_the_overflow_bound_lets_kernels_as_large_as_the_images_through():
    """Kernels equal to float32 images near the dtype's limit: finite results
    (a review found the first bound three times too strict here)."""
    peak = 0.9 * np.sqrt(np.finfo(np.float32).max / 64)
    Xb = (RNG.uniform(0.8, 1, (4, 1, 8, 8)) * peak).astype(np.float32)
    A = calm_np.log_joint(Xb, Xb[:2])
    assert np.isfinite(A).all()
    assert np.isfinite(calm_np.posterior(Xb, Xb[:2])).all()


@pytest.mark.parametrize("reg", [1e308, 1.7976931348623157e308, 5e307])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hostile_huge_reg_kernels_is_named_not_blamed_on_the_data(reg, dtype):
    X = RNG.standard_normal((20, 1, 8, 8)).astype(dtype)
    init = np.stack([np.full((1, 3, 3), 1.0), np.full((1, 3, 3), -1.0)])
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, reg_kernels=reg, init=init)
    with pytest.raises(ValueError, match=r"reg_kernels=.*overflow.*smaller") as info:
        model.fit(X)
    assert "scale" not in str(info.value)


def test_large_but_finite_reg_kernels_fits():
    X = RNG.standard_normal((20, 1, 8, 8))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, reg_kernels=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calm_np.DeadKernelWarning)
        model.fit(X)
    assert np.isfinite(model.lower_bound_)
