"""ConvolutionalMixture: exact batch EM, online EM, init, persistence, errors."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from _helpers import assert_close, planted_images, readonly_memmap
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import calm_np
from calm_np import ConvergenceWarning, ConvolutionalMixture, NotFittedError, _moves
from calm_np._data import ImageSource
from calm_np._em import Options
from calm_np._mstep import Params
from calm_np._xp import array_namespace, to_numpy


def quiet(**params):
    params.setdefault("random_state", 0)
    return ConvolutionalMixture(**params)


def fit_quiet(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", calm_np.DeadKernelWarning)
        return model.fit(X)


def noise(seed=0, shape=(30, 1, 9, 8)):
    return np.random.default_rng(seed).standard_normal(shape)


# the objective never decreases --------------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1),
    n_kernels=st.integers(1, 4),
    kernel=st.integers(1, 4),
    padding=st.integers(0, 2),
    channels=st.integers(1, 2),
    reg=st.sampled_from([0.0, 0.5, 10.0]),
    learn_weights=st.booleans(),
    latent=st.sampled_from(["image", "patch"]),
    scale=st.sampled_from([0.5, 3.0]),
)
def test_objective_never_decreases(
    backend,
    seed,
    n_kernels,
    kernel,
    padding,
    channels,
    reg,
    learn_weights,
    latent,
    scale,
):
    rng = np.random.default_rng(seed)
    X = scale * rng.standard_normal((12, channels, 7, 6))
    padding = min(padding, kernel - 1)  # more would add windows of zeros only
    model = quiet(
        n_kernels=n_kernels,
        kernel_size=kernel,
        padding=padding,
        reg_kernels=reg,
        learn_weights=learn_weights,
        latent=latent,
        max_iter=15,
        tol=0.0,
        random_state=seed,
    )
    fit_quiet(model, backend.asarray(X))
    bounds = np.asarray(model.lower_bounds_)
    assert np.all(np.isfinite(bounds))
    # rounding: objective is a mean of sums of ~100 terms of size ~100
    assert np.all(np.diff(bounds) >= -1e-9 * (1 + np.abs(bounds[1:])))
    # and the recorded objective is the penalised likelihood of kernels_
    kernels = to_numpy(model.kernels_)
    weights = to_numpy(model.weights_)
    ll = calm_np.log_likelihood(
        X, kernels, log_weights=np.log(weights), padding=padding, latent=latent
    )
    expected = np.mean(ll) - 0.5 * reg * np.sum(kernels**2) / len(X)
    assert model.lower_bound_ == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert bounds[-1] == pytest.approx(model.lower_bound_)


def test_objective_increases_from_init_on_planted_data(backend):
    kernels = 3 * np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    X, _ = planted_images(0, 40, 1, 10, 10, kernels)
    model = fit_quiet(
        quiet(n_kernels=2, kernel_size=4, max_iter=10), backend.asarray(X)
    )
    assert model.lower_bounds_[-1] > model.lower_bounds_[0]


# batching, memmaps, iterables ---------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 30, None])
def test_batch_size_does_not_change_fit(backend, batch_size):
    X = noise(3)
    ref = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=6), backend.asarray(X))
    model = fit_quiet(
        quiet(n_kernels=3, kernel_size=3, max_iter=6, batch_size=batch_size),
        backend.asarray(X),
    )
    assert_close(model.kernels_, to_numpy(ref.kernels_))
    np.testing.assert_allclose(model.lower_bounds_, ref.lower_bounds_, rtol=1e-12)


def test_memmap_and_iterable_give_the_same_model(tmp_path):
    X = noise(4, (25, 1, 8, 8))
    path = tmp_path / "images.dat"
    mm = readonly_memmap(X, path)
    params = dict(n_kernels=3, kernel_size=3, max_iter=5, batch_size=6)
    ref = fit_quiet(quiet(**params), X)
    from_mm = fit_quiet(quiet(**params), mm)
    batches = [X[i : i + 4] for i in range(0, 25, 4)]
    from_it = fit_quiet(quiet(**params), batches)

    class Reiterable:
        def __iter__(self):
            return iter(X[i : i + 9] for i in range(0, 25, 9))

    from_obj = fit_quiet(quiet(**params), Reiterable())

    class Sliceable:  # e.g. calm_np.datasets' STL-10 images: read by slices
        shape, dtype, ndim = X.shape, X.dtype, X.ndim

        def __len__(self):
            return len(X)

        def __getitem__(self, key):
            return X[key]

    from_lazy = fit_quiet(quiet(**params), Sliceable())
    for other in (from_mm, from_it, from_obj, from_lazy):
        np.testing.assert_allclose(other.kernels_, ref.kernels_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other.lower_bounds_, ref.lower_bounds_, rtol=1e-12)


def test_memmap_is_read_batch_by_batch(tmp_path, monkeypatch):
    X = noise(5, (40, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "images.dat"
    X.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    seen = []
    real = calm_np._data.batch_statistics

    def spy(batch, *args, **kwargs):
        seen.append(batch.shape[0])
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(calm_np._data, "batch_statistics", spy)
    fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=2, batch_size=16), mm)
    assert seen and max(seen) <= 16


def test_one_shot_iterator_is_refused():
    X = noise()
    with pytest.raises(TypeError, match="one-shot iterator"):
        quiet(n_kernels=2).fit(iter([X]))


# planted kernels are recovered --------------------------------------------------------


def _recovery_error(learned, truth):
    L = learned.reshape(len(learned), -1)
    T = truth.reshape(len(truth), -1)
    err = ((L[:, None] - T[None]) ** 2).sum(-1) / (T**2).sum(-1)[None]
    rows, cols = linear_sum_assignment(err)
    return err[rows, cols].max()


@given(seed=st.integers(0, 2**32 - 1), n_kernels=st.integers(2, 4))
def test_planted_kernels_are_recovered_up_to_permutation(seed, n_kernels):
    # patterns pasted at random positions: the classic trap is a kernel on a
    # shifted copy; the default init with the re-centring moves avoids it
    rng = np.random.default_rng(seed)
    truth = 3.0 * rng.standard_normal((n_kernels, 1, 5, 5))
    X, _ = planted_images(seed, 80 * n_kernels, 1, 12, 12, truth)
    model = fit_quiet(
        quiet(n_kernels=n_kernels, kernel_size=5, n_init=2, random_state=seed), X
    )
    assert _recovery_error(model.kernels_, truth) < 0.05


def test_planted_multichannel_kernels_are_recovered_on_backend(backend):
    rng = np.random.default_rng(11)
    truth = 3.0 * rng.standard_normal((3, 2, 4, 4))
    X, _ = planted_images(11, 150, 2, 10, 10, truth)
    model = fit_quiet(quiet(n_kernels=3, kernel_size=4), backend.asarray(X))
    assert _recovery_error(to_numpy(model.kernels_), truth) < 0.05


# warm start, n_init, determinism ------------------------------------------------------


def test_warm_start_twice_equals_two_iterations(backend):
    X = backend.asarray(noise(6))
    two = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=2, tol=0.0), X)
    warm = quiet(n_kernels=3, kernel_size=3, max_iter=1, tol=0.0, warm_start=True)
    fit_quiet(warm, X)
    fit_quiet(warm, X)
    assert_close(warm.kernels_, to_numpy(two.kernels_))
    assert warm.lower_bound_ == pytest.approx(two.lower_bound_, rel=1e-12)


@given(seed=st.integers(0, 2**32 - 1))
def test_n_init_is_never_worse_than_its_first_run(seed):
    X = noise(seed % 1000, (20, 1, 8, 8))
    one = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=8, random_state=seed), X)
    many = fit_quiet(
        quiet(n_kernels=3, kernel_size=3, max_iter=8, n_init=3, random_state=seed), X
    )
    assert many.lower_bound_ >= one.lower_bound_ - 1e-12


def test_random_state_makes_runs_identical(backend):
    X = backend.asarray(noise(7))
    a = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=5, random_state=42), X)
    b = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=5, random_state=42), X)
    np.testing.assert_array_equal(to_numpy(a.kernels_), to_numpy(b.kernels_))
    assert a.lower_bounds_ == b.lower_bounds_


@pytest.mark.parametrize("init", ["kmeans++", "random_patches", "random"])
def test_backend_fit_equals_numpy_fit(backend, init):
    X = noise(8)
    ref = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=4, init=init), X)
    model = fit_quiet(
        quiet(n_kernels=3, kernel_size=3, max_iter=4, init=init), backend.asarray(X)
    )
    assert array_namespace(model.kernels_) is array_namespace(backend.asarray(X))
    assert_close(model.kernels_, ref.kernels_, rtol=1e-9, atol=1e-9)


# outputs ------------------------------------------------------------------------------


def test_fitted_attributes_keep_namespace_dtype_device(backend, dtype):
    X = backend.asarray(noise(9), dtype)
    model = fit_quiet(quiet(n_kernels=3, kernel_size=(3, 2), max_iter=3), X)
    xp = backend.xp
    for arr in (model.kernels_, model.weights_):
        assert array_namespace(arr) is array_namespace(X)
        assert arr.dtype == getattr(xp, dtype)
    assert tuple(model.kernels_.shape) == (3, 1, 3, 2)
    assert float(xp.sum(model.weights_)) == pytest.approx(1.0)
    assert model.n_channels_in_ == 1
    feats = model.transform(X)
    assert tuple(feats.shape) == (30, 3) and feats.dtype == getattr(xp, dtype)
    scores = model.score_samples(X)
    assert tuple(scores.shape) == (30,) and scores.dtype == getattr(xp, dtype)
    score = model.score(X)
    assert type(score) is float


@pytest.mark.parametrize(
    "library, half",
    [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")],
)
@pytest.mark.parametrize("latent", ["image", "patch"])
def test_half_precision_images_are_computed_in_float32(library, half, latent):
    """float16 (and torch's bfloat16) images are fitted and read out in
    float32: the same model, features and statistics as the float32 copy of
    the same values, in the caller's namespace."""
    if library == "torch":
        torch = pytest.importorskip("torch")
        X = torch.asarray(noise(11)).to(getattr(torch, half))
        X32 = X.to(torch.float32)
    else:
        X = noise(11).astype(half)
        X32 = X.astype(np.float32)
    params = dict(n_kernels=3, kernel_size=3, max_iter=3, latent=latent, padding=1)
    model = fit_quiet(quiet(**params), X)
    ref = fit_quiet(quiet(**params), X32)
    assert array_namespace(model.kernels_) is array_namespace(X)
    for got, want in [
        (model.kernels_, ref.kernels_),
        (model.transform(X), ref.transform(X32)),
        (calm_np.posterior(X, ref.kernels_, latent=latent), None),
    ]:
        assert str(got.dtype).endswith("float32")
        if want is not None:
            assert_close(got, to_numpy(want), rtol=1e-6, atol=1e-6)
    stats = calm_np.sufficient_statistics(X, ref.kernels_, latent=latent)
    want = calm_np.sufficient_statistics(X32, ref.kernels_, latent=latent)
    assert_close(stats.sums, to_numpy(want.sums), rtol=1e-6, atol=1e-6)
    assert model.lower_bounds_ == pytest.approx(ref.lower_bounds_, rel=1e-9)


def test_integer_images_under_a_half_precision_default_run_in_float32():
    torch = pytest.importorskip("torch")
    X = torch.asarray(np.random.default_rng(0).integers(0, 4, (20, 1, 8, 8)))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        model = fit_quiet(quiet(n_kernels=3, kernel_size=3, max_iter=3), X)
    finally:
        torch.set_default_dtype(default)
    assert model.kernels_.dtype == torch.float32


def test_score_samples_equals_log_likelihood(backend):
    X = backend.asarray(noise(10))
    model = fit_quiet(
        quiet(
            n_kernels=3,
            kernel_size=3,
            max_iter=3,
            padding=1,
            learn_weights=True,
            batch_size=7,
        ),
        X,
    )
    expected = calm_np.log_likelihood(
        X, model.kernels_, log_weights=backend.xp.log(model.weights_), padding=1
    )
    assert_close(model.score_samples(X), to_numpy(expected))
    assert model.score(X) == pytest.approx(float(np.mean(to_numpy(expected))))


@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("features", ["log_joint", "log_posterior", "posterior"])
@pytest.mark.parametrize("pooling", [1, 2, (3, 1)])
def test_transform_pools_posterior_maps(latent, features, pooling):
    X = noise(12)
    model = fit_quiet(
        quiet(
            n_kernels=3,
            kernel_size=3,
            max_iter=3,
            latent=latent,
            features=features,
            pooling=pooling,
        ),
        X,
    )
    F = to_numpy(model.transform(X))
    cells = 4 if pooling == 2 else (3 if pooling == (3, 1) else 1)
    assert F.shape == (30, 3 * cells)
    A = calm_np.log_joint(X, model.kernels_, log_weights=np.log(model.weights_))
    from scipy.special import logsumexp

    if latent == "image":
        log_post = A - logsumexp(A, axis=(1, 2, 3), keepdims=True)
    else:
        log_post = A - logsumexp(A, axis=1, keepdims=True)
    maps = A if features == "log_joint" else log_post
    # the whole-image cell pooled directly, against the sum over the cells
    whole = logsumexp(maps, axis=(2, 3))
    pooled = (
        logsumexp(F.reshape(30, 3, cells), axis=2)
        if features != "posterior"
        else np.log(F.reshape(30, 3, cells).sum(axis=2))
    )
    np.testing.assert_allclose(pooled, whole, rtol=1e-10, atol=1e-10)
    if features == "posterior":
        total = 1.0 if latent == "image" else A.shape[2] * A.shape[3]
        np.testing.assert_allclose(F.sum(axis=1), total, rtol=1e-10)


# convergence, degenerate data, dead kernels -------------------------------------------


def test_convergence_warning_says_what_to_change():
    with pytest.warns(
        ConvergenceWarning,
        match="did not converge in max_iter=2 "
        r"iterations .* increase max_iter or tol",
    ):
        quiet(n_kernels=3, kernel_size=3, max_iter=2, tol=0.0).fit(noise())


def test_converged_fit_sets_converged_and_stops_early():
    model = quiet(n_kernels=2, kernel_size=3, max_iter=200, tol=1e-3).fit(noise(2))
    assert model.converged_ and model.n_iter_ < 200


def test_max_iter_zero_initialises_only():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = quiet(n_kernels=3, kernel_size=3, max_iter=0).fit(noise())
    assert model.n_iter_ == 0 and model.lower_bounds_ == []
    X = noise()
    assert model.lower_bound_ == pytest.approx(
        float(np.mean(calm_np.log_likelihood(X, model.kernels_)))
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros((10, 1, 8, 8)),
        lambda: np.full((10, 1, 8, 8), 3.0),
        lambda: np.repeat(noise(1, (1, 1, 8, 8)), 10, axis=0),
    ],
    ids=["zeros", "constant", "repeated"],
)
@pytest.mark.parametrize("learn_weights", [False, True])
def test_degenerate_data_stays_finite_for_100_iterations(backend, make, learn_weights):
    model = quiet(
        n_kernels=3,
        kernel_size=3,
        max_iter=100,
        tol=0.0,
        learn_weights=learn_weights,
        reg_kernels=0.0,
    )
    fit_quiet(model, backend.asarray(make()))
    assert np.all(np.isfinite(to_numpy(model.kernels_)))
    assert np.all(np.isfinite(model.lower_bounds_))
    assert np.all(np.isfinite(to_numpy(model.transform(backend.asarray(make())))))


def test_float32_stays_float32_with_wide_statistics(backend):
    X = backend.asarray(noise(13), "float32")
    model = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=5), X)
    assert model.kernels_.dtype == backend.xp.float32
    ref = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=5), noise(13))
    np.testing.assert_allclose(
        to_numpy(model.kernels_), ref.kernels_, rtol=1e-3, atol=1e-3
    )


def test_dead_kernel_keeps_its_value_and_is_named():
    # a kernel far from all data gets no posterior mass
    X = noise(14, (20, 1, 6, 6))
    init = np.stack([np.zeros((1, 3, 3)), np.full((1, 3, 3), 1e3)])
    model = quiet(n_kernels=2, kernel_size=3, init=init, max_iter=1, tol=0.0)
    with pytest.warns(calm_np.DeadKernelWarning, match=r"kernels \[1\]"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X)
    np.testing.assert_array_equal(model.kernels_[1], init[1])
    assert np.all(np.isfinite(model.kernels_))


# moves --------------------------------------------------------------------------------


def _planted_source(n=80, batch_size=7):
    truth = 3.0 * np.random.default_rng(21).standard_normal((2, 1, 4, 4))
    X, _ = planted_images(21, n, 1, 10, 10, truth)
    return truth, ImageSource(X, batch_size=batch_size)


def test_a_move_is_judged_on_an_evenly_spaced_sample_first(monkeypatch):
    """``Moves._gains_on_sample``: a move that lowers the objective on
    ``SCREEN_IMAGES`` evenly spaced images is dropped without a whole pass; one
    that raises it goes on to be judged on all; a fit under four times the
    sample is not screened."""
    monkeypatch.setattr(_moves, "SCREEN_IMAGES", 16)
    truth, source = _planted_source()
    moves = _moves.Moves(source, (4, 4), (0, 0), np.random.RandomState(0), 0.0, False)
    read = []

    def e_step(params, margin=0, source=source, bar=None):
        read.append(source.n_samples)
        return source.statistics(params.kernels, params.log_weights, Options())

    log_w = np.log(np.full(2, 0.5))
    right = Params(truth, log_w)
    wrong = Params(truth[::-1, :, ::-1, :].copy(), log_w)  # flipped patterns
    assert moves._gains_on_sample(e_step, wrong, right)
    assert not moves._gains_on_sample(e_step, right, wrong)
    assert not moves._gains_on_sample(e_step, right, right)  # no gain, no pass
    assert read == [16] * 6
    np.testing.assert_array_equal(to_numpy(moves.sample.X), source.X[::5])
    # the penalty's change counts: the same kernels scaled up lose under λ
    heavy = _moves.Moves(source, (4, 4), (0, 0), np.random.RandomState(0), 1e4, False)
    assert not heavy._gains_on_sample(e_step, wrong, Params(2 * truth, log_w))
    small = _moves.Moves(
        _planted_source(n=63)[1], (4, 4), (0, 0), np.random.RandomState(0), 0.0, False
    )
    read.clear()
    assert small._gains_on_sample(e_step, right, wrong) and read == []


@pytest.mark.parametrize("named", [[], [0], [1], [0, 1]])
def test_moves_reseed_exactly_the_kernels_starved_names(monkeypatch, named):
    """One test of a starved kernel (``_moves.starved``): the moves re-seed
    what it names (and what DeadKernelWarning names), nothing else; here the
    two kernels are far apart, so no duplicate is added."""
    truth, source = _planted_source()
    stats = source.statistics(truth, np.log(np.full(2, 0.5)), Options())
    monkeypatch.setattr(_moves, "starved", lambda s: list(named))
    moves = _moves.Moves(source, (4, 4), (0, 0), np.random.RandomState(0), 0.0, False)
    assert moves._bad(stats, truth, 0) == named
    monkeypatch.undo()
    counts = to_numpy(stats.counts)
    stats = dataclasses.replace(stats, counts=np.asarray([counts.sum(), 0.0]))
    assert _moves.starved(stats) == [1] == moves._bad(stats, truth, 0)


class _Lazy:
    """An array-like read by slices only (like ``calm_np.datasets``' STL-10)."""

    def __init__(self, X):
        self.X, self.shape = X, X.shape

    def __len__(self):
        return len(self.X)

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step not in (None, 1):
            raise IndexError("read by slices")
        return self.X[key]


@pytest.mark.parametrize("kind", ["array", "memmap", "batches", "lazy", "dask"])
def test_spaced_sample_is_the_same_images_for_every_input_kind(kind, tmp_path):
    X = noise(22, (83, 1, 5, 5))
    if kind == "memmap":
        X_in = readonly_memmap(X, tmp_path / "x.dat")
    elif kind == "batches":
        X_in = [X[i : i + 10] for i in range(0, 83, 10)]
    elif kind == "lazy":
        X_in = _Lazy(X)
    elif kind == "dask":
        da = pytest.importorskip("dask.array")
        X_in = da.from_array(X, chunks=(20, 1, 5, 5))
    else:
        X_in = X
    sample = ImageSource(X_in, batch_size=9).spaced(16)  # every 5th, to the end
    got = np.concatenate([np.asarray(b) for b in sample.batches()])
    np.testing.assert_array_equal(got, X[::5])
    assert sample.batch_size == 9
    if kind in ("array", "memmap"):
        assert np.shares_memory(np.asarray(sample.X), X_in)  # a view, no copy


def test_the_screen_sample_reaches_the_last_images(monkeypatch):
    """A pattern only in the last images (ordered data): the sample runs to
    the end, so the re-seeding move that finds it is kept (with a sample of
    the first ``SCREEN_IMAGES · (n // SCREEN_IMAGES)`` images it was not)."""
    monkeypatch.setattr(_moves, "SCREEN_IMAGES", 8)  # 39 images play 5119
    rng = np.random.default_rng(0)
    A, B = 3 * rng.standard_normal((1, 4, 4)), 3 * rng.standard_normal((1, 4, 4))
    X = rng.standard_normal((39, 1, 10, 10))
    for i in range(39):
        y, x = rng.integers(7, size=2)
        X[i, :, y : y + 4, x : x + 4] += B if i >= 32 else A
    init = np.stack([A, A + 0.01 * rng.standard_normal(A.shape)])  # duplicates
    model = fit_quiet(
        quiet(n_kernels=2, kernel_size=4, init=init, max_iter=30, tol=0.05), X
    )
    found = max(abs(np.corrcoef(k.ravel(), B.ravel())[0, 1]) for k in model.kernels_)
    assert found > 0.9


def test_screened_moves_keep_fits_monotone_and_batching_free(monkeypatch):
    """With the screen active (a stalled fit tries a move every iteration),
    the objective never drops and the batch size changes nothing but
    rounding: the sample is the same images whatever the batching."""
    monkeypatch.setattr(_moves, "SCREEN_IMAGES", 16)
    screened = []
    gains = _moves.Moves._gains_on_sample

    def spy(self, *args):
        screened.append(gains(self, *args))
        return screened[-1]

    monkeypatch.setattr(_moves.Moves, "_gains_on_sample", spy)
    truth, source = _planted_source(n=96)
    params = dict(n_kernels=3, kernel_size=4, max_iter=8, tol=1e3, init="random")
    models = [fit_quiet(quiet(batch_size=b, **params), source.X) for b in (None, 7, 40)]
    assert len(screened) >= 3  # one screened move per fit at least
    for m in models:
        assert np.all(np.diff(m.lower_bounds_) >= -1e-9 * np.abs(m.lower_bounds_[1:]))
        assert_close(m.kernels_, models[0].kernels_, rtol=1e-8, atol=1e-10)
        assert m.lower_bounds_ == pytest.approx(models[0].lower_bounds_, rel=1e-10)


# callback and verbose -----------------------------------------------------------------


def test_callback_sees_each_iteration_and_can_stop():
    seen = []

    def callback(model):
        seen.append((model.n_iter_, model.lower_bounds_[-1]))
        return model.n_iter_ == 3

    model = fit_quiet(
        quiet(n_kernels=2, kernel_size=3, max_iter=10, tol=0.0, callback=callback),
        noise(),
    )
    assert [s[0] for s in seen] == [1, 2, 3]
    assert model.n_iter_ == 3 and model.lower_bounds_[-1] == seen[-1][1]


def test_verbose_prints_one_line_per_iteration(capsys):
    fit_quiet(
        quiet(n_kernels=2, kernel_size=3, max_iter=3, tol=0.0, verbose=1), noise()
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "iter" in ln]
    assert len(lines) == 3 and "objective" in lines[0] and " s" in lines[0]


# online EM ----------------------------------------------------------------------------


def test_partial_fit_improves_on_its_initialisation():
    rng = np.random.default_rng(0)
    truth = 3.0 * rng.standard_normal((2, 1, 4, 4))
    X, _ = planted_images(0, 400, 1, 10, 10, truth)
    model = quiet(n_kernels=2, kernel_size=4)
    for _epoch in range(3):
        for i in range(0, 400, 50):
            model.partial_fit(X[i : i + 50])
    assert model.n_iter_ == 24 and len(model.lower_bounds_) == 24
    # the first call initialises from its batch exactly as fit(max_iter=0)
    init = quiet(n_kernels=2, kernel_size=4, max_iter=0).fit(X[:50])
    assert model.score(X) > init.score(X) + 1.0
    assert np.all(np.isfinite(model.kernels_))


def test_partial_fit_after_fit_continues_from_fitted_model():
    X = noise(15)
    model = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=50), X)
    kernels = model.kernels_.copy()
    model.partial_fit(X)
    # one step from a converged fixed point barely moves
    np.testing.assert_allclose(model.kernels_, kernels, atol=0.05)


def test_partial_fit_checks_channels():
    model = quiet(n_kernels=2, kernel_size=3).partial_fit(noise())
    with pytest.raises(
        ValueError,
        match=r"X has 2 channel\(s\) but the model was "
        r"fitted on 1",
    ):
        model.partial_fit(noise(0, (5, 2, 9, 8)))


# persistence --------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_exact(backend, tmp_path):
    X = backend.asarray(noise(16), "float32")
    model = fit_quiet(
        quiet(
            n_kernels=3,
            kernel_size=3,
            max_iter=3,
            padding=(1, 0),
            learn_weights=True,
            pooling=2,
        ),
        X,
    )
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = ConvolutionalMixture.load(path)
    np.testing.assert_array_equal(loaded.kernels_, to_numpy(model.kernels_))
    np.testing.assert_array_equal(loaded.weights_, to_numpy(model.weights_))
    assert loaded.kernels_.dtype == np.float32
    assert loaded.lower_bounds_ == model.lower_bounds_
    assert loaded.get_params()["padding"] == (1, 0)
    back = ConvolutionalMixture.load(path, xp=backend.xp)
    assert array_namespace(back.kernels_) is array_namespace(X)
    np.testing.assert_array_equal(
        to_numpy(back.transform(X)), to_numpy(model.transform(X))
    )


def _corrupt(tmp_path, kind):
    X = noise(17)
    path = tmp_path / "model.npz"
    fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=1), X).save(path)
    data = path.read_bytes()
    bad = tmp_path / f"{kind}.npz"
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        np.savez(bad, weights=np.ones(3))
    elif kind == "not_npz":
        bad.write_text("hello")
    elif kind in ("newer", "other_format"):
        with np.load(path) as f:
            arrays = dict(f)
        header = json.loads(bytes(arrays["header"]).decode())
        if kind == "newer":
            header["format_version"] = 99
        else:
            header["format"] = "something.else"
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        np.savez(bad, **arrays)
    elif kind == "object":
        with np.load(path) as f:
            arrays = dict(f)
        arrays["kernels"] = np.array([None, 1], dtype=object)
        np.savez(bad, **arrays)
    return bad


@pytest.mark.parametrize(
    "kind, match",
    [
        ("truncated", "truncated or not an .npz file"),
        ("not_npz", "truncated or not an .npz file"),
        ("foreign", "is not a calm_np model file"),
        ("other_format", "is not a calm_np model file"),
        ("newer", "format version 99, newer than this calm_np reads"),
        ("object", "object arrays"),
    ],
)
def test_corrupt_model_files_are_refused(tmp_path, kind, match):
    bad = _corrupt(tmp_path, kind)
    with pytest.raises(ValueError, match=match):
        ConvolutionalMixture.load(bad)


def test_saved_file_holds_no_pickles(tmp_path):
    path = tmp_path / "m.npz"
    fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=1), noise()).save(path)
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            arr = np.lib.format.read_array(
                io.BytesIO(zf.read(name)), allow_pickle=False
            )
            assert arr.dtype != object


# scikit-learn protocol ----------------------------------------------------------------


def test_get_set_params_clone_and_pipeline():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = ConvolutionalMixture(3, kernel_size=3, max_iter=2, random_state=0)
    params = model.get_params()
    assert params["n_kernels"] == 3 and params["kernel_size"] == 3
    twin = clone(model)
    assert twin.get_params() == params and twin is not model
    assert model.set_params(tol=0.5) is model and model.tol == 0.5
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        model.set_params(bogus=1)
    X = noise(18, (40, 1, 8, 8))
    y = np.arange(40) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(model, LogisticRegression()).fit(X, y)
    assert pipe.predict(X).shape == (40,)
    assert sklearn.__version__


def test_fit_returns_self_and_leaves_params_untouched():
    model = ConvolutionalMixture(2, kernel_size=3, max_iter=2, random_state=0)
    before = model.get_params()
    assert fit_quiet(model, noise()) is model
    assert model.get_params() == before


def test_not_fitted_error():
    model = ConvolutionalMixture(2)
    for method in ("transform", "score_samples", "score", "save"):
        with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
            getattr(model, method)(noise())


def test_importing_calm_np_imports_no_optional_backend():
    code = (
        "import sys, calm_np, calm_np.datasets\n"
        "bad = [m for m in ('torch', 'cupy', 'dask', 'sklearn', 'matplotlib') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# bad input: clear errors, and a fitted model left exactly as it was -------------------


BAD_PARAMS = [
    (dict(n_kernels=0), ValueError, "n_kernels must be >= 1, got 0"),
    (dict(n_kernels=2.5), TypeError, "n_kernels must be an int"),
    (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (dict(kernel_size="big"), TypeError, "kernel_size must be an int or a pair"),
    (dict(tol=-1.0), ValueError, "tol must be a finite number >= 0, got -1.0"),
    (dict(max_iter=-1), ValueError, "max_iter must be >= 0, got -1"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    (
        dict(reg_kernels=float("nan")),
        ValueError,
        "reg_kernels must be a finite number >= 0, got nan",
    ),
    (dict(reg_kernels=float("inf")), ValueError, "reg_kernels must be a finite"),
    (
        dict(init="magic"),
        ValueError,
        "init must be one of .'kmeans\\+\\+', 'greedy_kmeans\\+\\+', "
        "'random_patches', 'random'. or an array of kernels, got 'magic'",
    ),
    (dict(method="direct"), ValueError, "method must be one of"),
    (dict(latent="pixel"), ValueError, "latent must be one of .'image', 'patch'."),
    (dict(n_init=0), ValueError, "n_init must be >= 1"),
    (dict(init=np.zeros((2, 1, 3, 3))), ValueError, "init kernels are all identical"),
    (
        dict(init=np.ones((3, 1, 3, 3))),
        ValueError,
        r"init has shape \(3, 1, 3, 3\) but must be .* = \(2, 1, 3, 3\)",
    ),
    (
        dict(init=np.full((2, 1, 3, 3), np.nan)),
        ValueError,
        "init contains NaN or infinity",
    ),
    (
        dict(kernel_size=12),
        ValueError,
        r"kernel size \(12, 12\) is larger than the padded image \(9, 8\)",
    ),
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(random_state="seed"), TypeError, "random_state must be None, an int"),
]

BAD_X = [
    (lambda X: np.where(X > 1.5, np.nan, X), ValueError, "X contains NaN or infinity"),
    (lambda X: np.where(X > 1.5, np.inf, X), ValueError, "X contains NaN or infinity"),
    (lambda X: X[0, 0], ValueError, "X must have shape"),
    (lambda X: X + 0j, TypeError, "X has complex dtype"),
    (lambda X: X.astype(object), TypeError, "X has dtype object"),
    (lambda X: X[:0], ValueError, "X contains no images"),
]


def _snapshot(model):
    return {
        k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
        for k, v in vars(model).items()
        if k.endswith("_")
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k]


@pytest.mark.parametrize("params, exc, match", BAD_PARAMS)
def test_bad_parameters_raise_and_leave_fitted_model_intact(params, exc, match):
    model = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=2), noise())
    before = _snapshot(model)
    model.set_params(**params)
    with pytest.raises(exc, match=match):
        model.fit(noise())
    _assert_same(before, _snapshot(model))


@pytest.mark.parametrize("change, exc, match", BAD_X)
@pytest.mark.parametrize(
    "method", ["fit", "partial_fit", "transform", "score_samples", "score"]
)
def test_bad_images_raise_and_leave_fitted_model_intact(change, exc, match, method):
    model = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=2), noise())
    before = _snapshot(model)
    with pytest.raises(exc, match=match):
        getattr(model, method)(change(noise()))
    _assert_same(before, _snapshot(model))


@pytest.mark.parametrize(
    "method", ["partial_fit", "transform", "score_samples", "score"]
)
def test_channel_mismatch_after_fit_is_refused(method):
    model = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=2), noise())
    with pytest.raises(
        ValueError,
        match=r"X has 3 channel\(s\) but the model was "
        r"fitted on 1; pass images with 1 channel",
    ):
        getattr(model, method)(noise(0, (4, 3, 9, 8)))


def test_failure_mid_fit_leaves_previous_model_intact():
    model = fit_quiet(quiet(n_kernels=2, kernel_size=3, max_iter=2), noise())
    before = _snapshot(model)
    good = noise(1)
    bad = noise(2)
    bad[-1, 0, 0, 0] = np.nan  # found only when the last batch is read
    model.set_params(batch_size=5)
    with pytest.raises(ValueError, match="X contains NaN"):
        model.fit(np.concatenate([good, bad]))
    _assert_same(before, _snapshot(model))

    def explode(m):
        raise KeyboardInterrupt

    model.set_params(callback=explode)
    with pytest.raises(KeyboardInterrupt):
        model.fit(good)
    _assert_same(before, _snapshot(model))
