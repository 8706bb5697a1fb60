"""The chunked plans equal the whole-batch reference engines (array-api-extra's
``_agnostic`` pattern: same inputs, fast path on and off, same numbers).

The plans' ``statistics`` of each engine (chunked, threaded on NumPy,
normaliser folded into the image side, row-DFT GEMMs for the ``fft``
engine) must give the ``N_k``, ``S_k`` and normaliser of the plain chain
``correlate -> logsumexp -> exp -> weighted_sum``, for both latents (softmax
per image or per position) and with margins (M-step windows enlarged), on
every namespace (the plans are one code for all of them).
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
from _helpers import make_data, planted_images, problems
from hypothesis import given
from hypothesis import strategies as st

import calm_np._xp
from calm_np import _em
from calm_np._engines import _dft, _kit, _passes, _plans, reference_statistics
from calm_np._xp import native_paths

pytestmark = pytest.mark.numpy

# float32: the paths sum in different orders (GEMM blocking, DFT by matrix
# vs FFT); both are within ~1e-6 relative of float64, so 1e-5 of each other.
TOL = {"float64": 1e-12, "float32": 1e-5}

SHAPES = [
    # n, c, H, W, k, (kh, kw), padding
    (37, 2, 11, 12, 5, (4, 3), 1),
    (9, 3, 9, 9, 4, (9, 9), 0),
    (6, 1, 6, 7, 3, (2, 5), (2, 0)),
    (3, 1, 1, 5, 2, (1, 2), 0),
    # row length F = Wp of 2 and 1: only the DC (and Nyquist) slot
    (4, 2, 3, 2, 3, (2, 1), 0),
    (4, 1, 3, 1, 3, (2, 1), 0),
    # rows of F = 20 (24 with the margin) samples and maps of 18 or more:
    # the row-DFT plan's radix-2 fold
    (5, 2, 7, 20, 3, (3, 3), 0),
    # fewer patch values than kernels (D < k): the im2col plan divides the
    # patches by the normalisers, not the maps (with margin 2, Dm = 36:
    # the maps for the first, the patches still for the second)
    (8, 1, 9, 10, 12, (2, 2), 1),
    (5, 1, 8, 8, 40, (2, 2), 0),
]


def _fused_and_generic(X, M, log_w, padding, method, latent="image", margin=0):
    batch = _em._Batch(X, M, log_w, _em.Options(padding, method, latent))
    args = (batch.kernels, batch.log_weights, np.float64, latent, margin)
    fused = batch.engine.statistics(*args)
    with native_paths(False):
        generic = reference_statistics(batch.engine, *args)
    return fused, generic


def _assert_same(fused, generic, dtype):
    tol = TOL[dtype]
    for a, b in zip(fused, generic, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape
        finite = np.isfinite(b)
        np.testing.assert_array_equal(np.isfinite(a), finite)
        scale = max(np.max(np.abs(b[finite]), initial=0.0), 1e-300)
        np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=tol * scale)


@pytest.mark.parametrize("margin", [0, 2])
@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["im2col", "fft"])
def test_fused_statistics_match_generic(method, shape, dtype, latent, margin):
    n, c, H, W, k, kernel, padding = shape
    rng = np.random.default_rng(n + k)
    X = rng.standard_normal((n, c, H, W)).astype(dtype)
    M = rng.standard_normal((k, c, *kernel)).astype(dtype)
    log_w = np.log(rng.dirichlet(np.ones(k))).astype(dtype)
    fused, generic = _fused_and_generic(X, M, log_w, padding, method, latent, margin)
    assert fused[0].dtype == np.float64 and fused[1].dtype == np.float64
    assert fused[2].dtype == np.dtype(dtype)
    Ho, Wo = generic[2].shape[2:]
    assert fused[2].shape == ((n, 1, Ho, Wo) if latent == "patch" else (n, 1, 1, 1))
    window = (kernel[0] + 2 * margin, kernel[1] + 2 * margin)
    assert fused[1].shape == (k, c, *window)
    _assert_same(fused, generic, dtype)


@given(
    p=problems(max_n=5, max_k=4, max_hw=9, max_kernel=5),
    method=st.sampled_from(["im2col", "fft"]),
    latent=st.sampled_from(["image", "patch"]),
    margin=st.integers(0, 3),
)
def test_fused_statistics_match_generic_any_shape(p, method, latent, margin):
    # every shape, latent and margin: float64 agrees to 1e-10 of the scale
    X, M, log_w = make_data(p)
    fused, generic = _fused_and_generic(
        X, M, log_w, p["padding"], method, latent, margin
    )
    for a, b in zip(fused, generic, strict=True):
        assert a.shape == b.shape
        scale = max(np.max(np.abs(b)), 1e-300)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("method", ["im2col", "fft"])
def test_fused_statistics_minus_inf_weight_and_peaked_posterior(method, latent):
    # a dead kernel (log π = −inf) gets N_k = 0 exactly; large kernels make
    # the posterior peaked, so most probabilities underflow (flushed to 0)
    rng = np.random.default_rng(1)
    M = 4 * rng.standard_normal((3, 1, 4, 4))
    X, _ = planted_images(2, 20, 1, 12, 12, M[:2], noise=0.5)
    log_w = np.array([np.log(0.6), np.log(0.4), -np.inf])
    for dtype in ("float32", "float64"):
        fused, generic = _fused_and_generic(
            X.astype(dtype),
            M.astype(dtype),
            log_w.astype(dtype),
            1,
            method,
            latent,
            margin=1,
        )
        assert fused[0][2] == 0.0
        assert np.all(fused[1][2] == 0.0)
        _assert_same(fused, generic, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(
    log_p=st.lists(st.floats(-800, 0, allow_nan=False), min_size=1, max_size=64),
    exact=st.lists(st.integers(-1100, 0), max_size=8),
)
def test_flush_keeps_probabilities_off_subnormals(dtype, log_p, exact):
    """``(p + T) − T``: 0 or at least tiny/eps, within tiny/eps or a unit in
    the last place of ``p``, unchanged from ``4 T / eps`` up, 0 below
    tiny/(2 eps); probabilities drawn over the whole range, subnormals and
    powers of two (the rounding edges) included."""
    info = np.finfo(dtype)
    T = float(info.tiny) / float(info.eps) ** 2
    top = int(np.log2(T / float(info.eps)))  # the ties sit just above T / eps
    exact = np.array([*exact, *range(top - 2, top + 4)], dtype=np.int32)
    p = np.concatenate([np.exp(np.array(log_p)), np.ldexp(1.0, exact)]).astype(dtype)
    floor = float(info.tiny) / float(info.eps)
    got = calm_np._xp.flush_tiny_inplace(p.copy(), np)
    assert got.dtype == p.dtype
    assert np.all((got == 0) | (got >= floor))
    err = np.abs(got.astype(float) - p.astype(float))
    assert np.all(err <= np.maximum(floor, float(info.eps) * p.astype(float)))
    big = p >= 4 * T / float(info.eps)  # below, T can be a tie: one ulp
    assert np.array_equal(got[big], p[big])
    assert np.all(got[p < floor / 2] == 0)


@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("method", ["im2col", "fft"])
def test_fused_statistics_many_chunks_on_threads(method, latent, monkeypatch):
    # more images than one chunk and two worker threads: every image is
    # counted once, whatever thread took its chunk
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "2")
    for cls in (_plans.Im2colPlan, _plans.RowDFTPlan):

        def init(self, *args, _original=cls.__init__, **kwargs):
            _original(self, *args, **kwargs)
            self.chunk_size = 7

        monkeypatch.setattr(cls, "__init__", init)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 1, 10, 10))
    M = rng.standard_normal((4, 1, 3, 3))
    fused, generic = _fused_and_generic(X, M, None, 0, method, latent, margin=1)
    _assert_same(fused, generic, "float64")
    per_image = 1 if latent == "image" else 8 * 8  # one posterior per position
    np.testing.assert_allclose(np.sum(fused[0]), 300.0 * per_image, rtol=1e-12)


def test_fused_statistics_through_sufficient_statistics_shape():
    # the same numbers as the public function, 3-D kernels included
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 8, 9))
    M = rng.standard_normal((2, 3, 3))
    public = __import__("calm_np").sufficient_statistics(X, M, padding=1)
    batch = _em._Batch(X, M, None, _em.Options(1, "auto"))
    counts, sums, _ = batch.engine.statistics(
        batch.kernels, batch.log_weights, np.float64
    )
    np.testing.assert_allclose(counts, public.counts, rtol=1e-12)
    np.testing.assert_allclose(sums[:, 0], public.sums, rtol=1e-12, atol=1e-14)


def test_blas_threads_restored_after_concurrent_calls():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController()
    before = [info["num_threads"] for info in controller.select(user_api="blas").info()]
    rng = np.random.default_rng(4)
    X = rng.standard_normal((64, 1, 12, 12))
    M = rng.standard_normal((3, 1, 5, 5))
    results, errors = [], []

    def run():
        try:
            batch = _em._Batch(X, M, None, _em.Options(0, "fft"))
            results.append(
                batch.engine.statistics(batch.kernels, batch.log_weights, np.float64)
            )
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        _assert_same(r, results[0], "float64")
    after = [info["num_threads"] for info in controller.select(user_api="blas").info()]
    assert after == before


@pytest.mark.parametrize("method", ["im2col", "fft"])
def test_fused_statistics_are_bit_reproducible_on_threads(method, monkeypatch):
    # the same data gives the same bits every time, however the threads race
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "2")
    for cls in (_plans.Im2colPlan, _plans.RowDFTPlan):

        def init(self, *args, _original=cls.__init__, **kwargs):
            _original(self, *args, **kwargs)
            self.chunk_size = 3

        def chunk(self, *args, _original=cls.chunk):
            time.sleep(random.random() * 2e-3)  # make the threads race
            return _original(self, *args)

        monkeypatch.setattr(cls, "__init__", init)
        monkeypatch.setattr(cls, "chunk", chunk)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 2, 9, 9))
    M = rng.standard_normal((5, 2, 4, 4))
    runs = [
        __import__("calm_np").sufficient_statistics(X, M, method=method)
        for _ in range(8)
    ]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.sums, runs[0].sums)
        np.testing.assert_array_equal(other.counts, runs[0].counts)


def test_fused_statistics_without_threadpoolctl(monkeypatch):
    # no threadpoolctl: chunks run in turn on the calling thread (BLAS keeps
    # its own threads), with the same numbers
    monkeypatch.setitem(calm_np._xp._BLAS, "controller", False)
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "2")
    rng = np.random.default_rng(6)
    X = rng.standard_normal((50, 2, 9, 10))
    M = rng.standard_normal((3, 2, 4, 4))
    for method in ("im2col", "fft"):
        fused, generic = _fused_and_generic(X, M, None, 1, method)
        _assert_same(fused, generic, "float64")


@pytest.mark.parametrize(
    "F, Wp, Wo", [(96, 96, 82), (20, 20, 18), (24, 24, 18), (8, 6, 6)]
)
def test_folded_row_transforms_equal_the_plain_dft(F, Wp, Wo):
    # the radix-2 fold (even and odd slots, a butterfly) gives the same
    # transforms as the plain DFT matrices, slots in transform order
    kit = _kit.Kit(np, "cpu", np.float64, np.float64)
    rowt = _dft.RowTransforms(F, Wp, Wo, kit)
    assert rowt.fold
    ns = (F + 1) // 2
    fwd_x, _ = _dft.dft_matrices(F, Wp, 0, "float64")
    fwd_g, inv = _dft.dft_matrices(F, Wo, Wo, "float64")
    rng = np.random.default_rng(F)
    rows, E, A = (
        rng.standard_normal((5, Wp)),
        rng.standard_normal((2 * ns, 7)),
        rng.standard_normal((Wo, 7)),
    )
    perm = (2 * rowt.order[:, None] + np.arange(2)).ravel()  # slots' re/im rows
    buffers = kit.scratch()
    X_f = rowt.images(rows, np.empty((2 * ns, 5)))
    np.testing.assert_allclose(X_f, (rows @ fwd_x.reshape(Wp, -1)).T[perm], atol=1e-12)
    want = inv.reshape(2 * ns, Wo).T[:, perm] @ E
    np.testing.assert_allclose(
        rowt.inverse(E, np.empty((Wo, 7)), buffers), want, atol=1e-12
    )
    want = (fwd_g.reshape(Wo, -1).T @ A)[perm]
    np.testing.assert_allclose(
        rowt.forward(A, np.empty((2 * ns, 7)), buffers), want, atol=1e-12
    )
    assert not _dft.RowTransforms(F + 2, Wp, Wo, kit).fold  # F % 4
    assert not _dft.RowTransforms(F, Wp, F // 2, kit).fold  # short maps


def test_every_engine_declares_the_interface():
    # each method name maps to an Engine subclass that implements both
    # correlations, and the chunked passes have a plan for each of them
    from calm_np._engines import ENGINES, Engine

    assert set(ENGINES) == {"im2col", "fft"}
    for name, cls in ENGINES.items():
        assert issubclass(cls, Engine) and cls.name == name
        for step in ("correlate", "weighted_sum"):
            assert getattr(cls, step) is not getattr(Engine, step)
    assert set(_plans.PLANS) == set(ENGINES)
    engine = Engine(np.zeros((2, 1, 5, 6)), (2, 3), np)
    assert (engine.n, engine.c, engine.Ho, engine.Wo) == (2, 1, 4, 4)
    with pytest.raises(NotImplementedError):
        engine.correlate(np.zeros((1, 1, 2, 3)))


def test_one_switch_decides_plans_or_reference(monkeypatch):
    # every namespace runs the chunked plans; with native paths off, the
    # whole-batch reference (the tests' oracle) instead
    calls = []
    monkeypatch.setattr(_passes, "statistics", lambda *args: calls.append(args) or args)
    batch = _em._Batch(np.ones((2, 1, 6, 6)), np.ones((2, 1, 3, 3)), None,
                       _em.Options(0, "fft"))  # fmt: skip
    batch.engine.statistics(batch.kernels, batch.log_weights, np.float64)
    assert len(calls) == 1
    with native_paths(False):
        batch.engine.statistics(batch.kernels, batch.log_weights, np.float64)
        assert len(calls) == 1


def test_auto_uses_the_cost_model_of_the_namespace(monkeypatch):
    # one cost model, with speeds per profile (namespace and device kind)
    from calm_np._engines import _cost, choose_method

    torch = pytest.importorskip("torch")
    assert _cost.profile(np) == "numpy"
    assert _cost.profile(calm_np._xp.array_namespace(torch.zeros(1))) == "torch-cpu"
    shapes = (1, 4, (9, 9), (3, 3))
    picks = []
    monkeypatch.setattr(_cost, "choose", lambda name, *args: picks.append(name))
    choose_method(np, *shapes)
    choose_method(calm_np._xp.array_namespace(torch.zeros(1)), *shapes)
    assert picks == ["numpy", "torch-cpu"]


@given(
    p=problems(max_n=5, max_k=4, max_hw=9, max_kernel=5),
    method=st.sampled_from(["im2col", "fft"]),
    latent=st.sampled_from(["image", "patch"]),
    features=st.sampled_from(["log_joint", "log_posterior", "posterior", "triangle"]),
    pooling=st.tuples(st.integers(1, 4), st.integers(1, 4)),
)
def test_fused_readouts_match_generic(p, method, latent, features, pooling):
    # the chunked E-step readout (features, pooling, log-likelihood) equals
    # the whole-batch generic one to 1e-10 in float64
    from calm_np import _readouts

    X, M, log_w = make_data(p)
    log_w = np.log(np.full(p["k"], 1.0 / p["k"])) if log_w is None else log_w
    kw = dict(log_weights=log_w, padding=p["padding"], method=method, latent=latent)
    fused = _readouts.pooled_features(X, M, features=features, pooling=pooling, **kw)
    score = _em.log_likelihood(X, M, **kw)
    with native_paths(False):
        generic = _readouts.pooled_features(
            X, M, features=features, pooling=pooling, **kw
        )
        generic_score = _em.log_likelihood(X, M, **kw)
    for a, b in ((fused, generic), (score, generic_score)):
        assert a.shape == b.shape
        finite = np.isfinite(b)
        np.testing.assert_array_equal(np.isfinite(a), finite)
        scale = max(np.max(np.abs(b[finite]), initial=0.0), 1e-300)
        np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("features", ["log_joint", "posterior", "triangle"])
def test_fused_readout_holds_a_few_images_maps(features, monkeypatch):
    # many chunks on two threads: results in image order, and no call of the
    # readout sees more than one chunk's maps
    from calm_np import _readouts

    monkeypatch.setenv("CALM_NP_NUM_THREADS", "2")

    def init(self, *args, _original=_plans.Im2colPlan.__init__, **kwargs):
        _original(self, *args, **kwargs)
        self.chunk_size = 5

    monkeypatch.setattr(_plans.Im2colPlan, "__init__", init)
    seen = []
    original_pool = _readouts.pool

    def pool(A, *args, **kwargs):
        seen.append(A.shape[0])
        return original_pool(A, *args, **kwargs)

    monkeypatch.setattr(_readouts, "pool", pool)
    rng = np.random.default_rng(7)
    X = rng.standard_normal((53, 1, 10, 10))
    M = rng.standard_normal((4, 1, 3, 3))
    opts = dict(method="im2col", features=features, pooling=2)
    fused = _readouts.pooled_features(X, M, **opts)
    assert max(seen) == 5 and sum(seen) == 53
    with native_paths(False):
        generic = _readouts.pooled_features(X, M, **opts)
    np.testing.assert_allclose(fused, generic, rtol=1e-12, atol=1e-12)


@given(
    shape=st.tuples(
        st.integers(1, 3), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)
    ),
    grid=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    spread=st.sampled_from([1.0, 300.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_pool_equals_a_logsumexp_and_a_sum_per_cell(shape, grid, spread, seed):
    # shifted per cell, summed by GEMMs: the same as each cell's own
    # logsumexp (spread 300: cells far below the map's maximum stay finite)
    from scipy.special import logsumexp as lse

    from calm_np import _readouts

    rng = np.random.default_rng(seed)
    A = spread * rng.standard_normal(shape)
    A[:, 0] = -np.inf if shape[1] > 1 else A[:, 0]  # a dead kernel
    n, k, Ho, Wo = shape
    cells = [
        (y0, y1, x0, x1)
        for y0, y1 in _readouts._edges(Ho, grid[0])
        for x0, x1 in _readouts._edges(Wo, grid[1])
    ]
    finite = np.where(np.isfinite(A), A, 0)  # sums of activations are finite
    for reduce, oracle, maps in (("logsumexp", lse, A), ("sum", np.sum, finite)):
        want = np.stack(
            [oracle(maps[:, :, a:b, c:d], axis=(2, 3)) for a, b, c, d in cells], axis=2
        ).reshape(n, -1)
        got = _readouts.pool(maps.copy(), grid, np, reduce=reduce)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * spread)


@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("method", ["im2col", "fft"])
@pytest.mark.parametrize("shape", SHAPES)
def test_plans_on_every_namespace_equal_the_reference(shape, method, latent, backend):
    # one code for every namespace: the plans on NumPy, array-api-strict,
    # PyTorch (and CuPy where a GPU is) give the reference's statistics
    if method == "fft" and backend.name == "strict_nofft":
        pytest.skip("method='fft' needs the fft extension (refused, tested)")
    n, c, H, W, k, kernel, padding = shape
    rng = np.random.default_rng(n + k)
    X = rng.standard_normal((n, c, H, W))
    M = rng.standard_normal((k, c, *kernel))
    log_w = np.log(rng.dirichlet(np.ones(k)))
    log_w[-1] = -np.inf  # a dead kernel
    log_w -= np.log(np.sum(np.exp(log_w)))
    _, generic = _fused_and_generic(X, M, log_w, padding, method, latent, margin=1)
    Xb, Mb, wb = (backend.asarray(a) for a in (X, M, log_w))
    batch = _em._Batch(Xb, Mb, wb, _em.Options(padding, method, latent))
    wide = backend.xp.float64
    args = (batch.kernels, batch.log_weights, wide, latent, 1)
    got = batch.engine.statistics(*args)
    for a, b in zip(got, generic, strict=True):
        a = calm_np._xp.to_numpy(a)
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        finite = np.isfinite(b)
        scale = max(np.max(np.abs(b[finite]), initial=0.0), 1e-300)
        np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("method", ["im2col", "fft"])
def test_the_gpu_configuration_on_torch_cpu(method, monkeypatch):
    # what a GPU runs (chunks sized for the device, no worker threads), on
    # torch CPU tensors standing in for CUDA ones: the same statistics
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(_kit, "_on_gpu", lambda native, device: True)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((300, 2, 11, 12))
    M = rng.standard_normal((5, 2, 4, 3))
    for latent in ("image", "patch"):
        fused, generic = _fused_and_generic(X, M, None, 1, method, latent, margin=1)
        batch = _em._Batch(torch.asarray(X), torch.asarray(M), None,
                           _em.Options(1, method, latent))  # fmt: skip
        kit = _kit.Kit(batch.xp, batch.device, torch.float64, torch.float64)
        assert kit.kind == "gpu" and kit.threads is None
        got = batch.engine.statistics(
            batch.kernels, batch.log_weights, torch.float64, latent, 1
        )
        for a, b in zip(got, generic, strict=True):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-10, atol=1e-10)


def test_a_larger_pool_never_shuts_down_one_in_use(monkeypatch):
    # a pass that holds the shared pool keeps submitting to it after another
    # thread asked for a larger one (was: "cannot schedule new futures after
    # shutdown" from concurrent transforms with many threads)
    from calm_np import _pool

    monkeypatch.setitem(_pool._POOL, "executor", None)
    monkeypatch.setitem(_pool._POOL, "size", 0)
    held = _pool.executor(2)
    bigger = _pool.executor(4)
    assert bigger is not held
    assert held.submit(lambda: 7).result() == 7
    assert _pool.executor(3) is bigger  # large enough: shared


def test_concurrent_passes_with_growing_thread_counts(monkeypatch):
    # many threads, each asking for more workers than the last: every pass
    # completes with the same statistics
    rng = np.random.default_rng(9)
    X = rng.standard_normal((40, 1, 10, 10))
    M = rng.standard_normal((3, 1, 3, 3))
    want = __import__("calm_np").sufficient_statistics(X, M)
    results, errors = [], []

    def run(threads):
        try:
            batch = _em._Batch(X, M, None, _em.Options(0, "im2col"))
            monkeypatch.setenv("CALM_NP_NUM_THREADS", str(threads))
            results.append(
                batch.engine.statistics(batch.kernels, batch.log_weights, np.float64)
            )
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(1, 9)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for counts, _, _ in results:
        np.testing.assert_allclose(counts, want.counts, rtol=1e-12)
