"""Scale-out on Dask (issue 6): statistics summed where the images live.

The cluster tests use a ``distributed.LocalCluster`` of two worker processes
with one thread each, on loopback, started once for the module and always
closed.  Every wait on the cluster has a timeout.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from dask.utils import key_split  # noqa: E402

import calm_np  # noqa: E402
from calm_np import _dask  # noqa: E402
from calm_np._xp import logsumexp  # noqa: E402

TIMEOUT = 120  # seconds; a healthy run of any test here takes a few


def planted(n, c=1, size=(12, 11), n_kernels=3, kernel=(4, 3), seed=0):
    """Images with a kernel pasted at a random place, plus unit noise."""
    rng = np.random.default_rng(seed)
    kernels = 3.0 * rng.standard_normal((n_kernels, c, *kernel))
    X = rng.standard_normal((n, c, *size))
    H, W = size
    for i in range(n):
        k = rng.integers(n_kernels)
        r, s = rng.integers(H - kernel[0] + 1), rng.integers(W - kernel[1] + 1)
        X[i, :, r : r + kernel[0], s : s + kernel[1]] += kernels[k]
    init = rng.standard_normal((n_kernels, c, *kernel))
    return X, kernels, init


def assert_statistics_equal(actual, expected, rtol=1e-10, atol=1e-9):
    assert actual.n_samples == expected.n_samples
    assert type(actual.counts) is type(expected.counts)
    for name in ("counts", "sums", "log_likelihood"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.shape == e.shape and a.dtype == e.dtype, name
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=name)


def run_bounded(func, *args, timeout=TIMEOUT, **kwargs):
    """Call ``func`` in a thread; fail instead of hanging past ``timeout``."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(func, *args, **kwargs)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            pytest.fail(f"{func.__name__} did not finish within {timeout} s")


# 1. no cluster: the threaded scheduler --------------------------------------


CHUNKINGS = [
    pytest.param(40, id="one-chunk"),
    pytest.param(7, id="even-7"),
    pytest.param(1, id="one-image-chunks"),
    pytest.param((13, 1, 0, 20, 6), id="uneven-with-empty"),
]


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("method", ["im2col", "fft"])
def test_statistics_equal_in_memory(chunks, method):
    X, _, init = planted(40, c=2)
    log_w = np.log([0.5, 0.3, 0.2])
    expected = calm_np.sufficient_statistics(
        X, init, log_weights=log_w, padding=(1, 2), method=method
    )
    Xd = da.from_array(X, chunks=(chunks, -1, -1, -1))
    for split_every in (2, 8):
        actual = _dask.statistics(
            Xd,
            init,
            log_weights=log_w,
            padding=(1, 2),
            method=method,
            split_every=split_every,
        )
        assert_statistics_equal(actual, expected)


@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("margin", [0, 1])
def test_statistics_latent_and_window_options_equal_in_memory(latent, margin):
    from calm_np._em import window_statistics

    X, _, init = planted(20, c=2)
    func = window_statistics if margin else calm_np.sufficient_statistics
    kw = dict(padding=1, latent=latent, **({"margin": margin} if margin else {}))
    expected = func(X, init, **kw)
    actual = _dask.statistics(da.from_array(X, chunks=(6, -1, -1, -1)), init, **kw)
    assert_statistics_equal(actual, expected)


def test_statistics_three_dim_images_and_kernels():
    X, _, init = planted(15)
    X3, init3 = X[:, 0], init[:, 0]
    expected = calm_np.sufficient_statistics(X3, init3, padding=1)
    actual = _dask.statistics(da.from_array(X3, chunks=(4, -1, -1)), init3, padding=1)
    assert actual.sums.shape == init3.shape
    assert_statistics_equal(actual, expected)


def test_statistics_float32_images_accumulate_in_float64():
    X, _, init = planted(30)
    X32, init32 = X.astype(np.float32), init.astype(np.float32)
    expected = calm_np.sufficient_statistics(X32, init32)
    actual = _dask.statistics(da.from_array(X32, chunks=(8, -1, -1, -1)), init32)
    assert actual.sums.dtype == np.float64
    # chunk sums add in float64; the float32 maps inside are the same
    assert_statistics_equal(actual, expected, rtol=1e-6, atol=1e-6)


def test_statistics_sends_kernels_as_one_key():
    X, _, init = planted(30)
    Xd = da.from_array(X, chunks=(3, -1, -1, -1))
    seen = {}

    def inspecting_get(dsk, keys, **kwargs):
        if hasattr(dsk, "__dask_graph__"):  # dask >= 2025 hands over an expr
            dsk = dsk.__dask_graph__()
        dsk = dict(dsk)
        holders = [
            key for key, task in dsk.items() if any(v is init for v in _literals(task))
        ]
        seen["kernel_keys"] = holders
        seen["n_statistics"] = sum("calm_np-statistics" in str(k) for k in dsk)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=inspecting_get):
        _dask.statistics(Xd, init)
    assert seen["n_statistics"] == 10
    assert len(seen["kernel_keys"]) == 1


def _literals(task):
    """Every Python object a task spec carries (old tuples or new Task)."""
    stack, out = [task], []
    while stack:
        t = stack.pop()
        out.append(t)
        if isinstance(t, (tuple, list)):
            stack.extend(t)
        elif isinstance(t, dict):
            stack.extend(t.values())
        for attr in ("value", "args", "kwargs"):  # dask._task_spec nodes
            v = getattr(t, attr, None)
            if v is not None and not callable(v):
                stack.append(v)
    return out


class PlantedSource:
    """Array-like images that pickle as their recipe, like a file on disk.

    ``da.from_array`` over it gives chunks that a worker reads itself, the
    way real data (zarr, HDF5, a memmap) reaches a cluster.
    """

    def __init__(self, n, seed=0, size=(12, 11)):
        self.recipe = dict(n=n, seed=seed, size=size)
        self._X = planted(n, size=size, seed=seed)[0]
        self.shape, self.dtype, self.ndim = self._X.shape, self._X.dtype, 4

    def __reduce__(self):
        return (_rebuild_source, (self.recipe,))

    def __getitem__(self, index):
        return self._X[index]


def _rebuild_source(recipe):
    return PlantedSource(**recipe)


def lazy_images(n, chunks, seed=0, size=(12, 11)):
    source = PlantedSource(n, seed=seed, size=size)
    meta = np.empty((0, 0, 0, 0))
    Xd = da.from_array(source, (chunks, -1, -1, -1), meta=meta, name="planted")
    return source._X, Xd


def _graph_prefixes(collection_or_call):
    """Key prefixes of the graph a computation hands to the scheduler."""
    seen = set()

    def inspecting_get(dsk, keys, **kwargs):
        if hasattr(dsk, "__dask_graph__"):
            dsk = dsk.__dask_graph__()
        seen.update(key_split(k) for k in dict(dsk))
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=inspecting_get):
        collection_or_call()
    return seen


def test_statistics_read_and_reduce_each_chunk_in_one_task():
    X, Xd = lazy_images(30, 4)
    Xd = 0.5 * Xd + 1.0  # elementwise work on the chunks fuses too
    _, _, init = planted(1)
    expected = calm_np.sufficient_statistics(0.5 * X + 1.0, init)
    out = {}
    prefixes = _graph_prefixes(lambda: out.update(s=_dask.statistics(Xd, init)))
    # no task yields an image chunk: reading, scaling and the statistics of a
    # chunk are one task, so nothing but statistics can leave a worker
    assert prefixes == {
        "calm_np-statistics",  # read + scale + statistics, one task per chunk
        "calm_np-sum",
        "ndarray",  # the kernels, once
        "original-planted",  # the recipe of the source, once
    }
    assert_statistics_equal(out["s"], expected)


def test_map_images_reads_and_maps_each_chunk_in_one_task():
    X, Xd = lazy_images(30, 4)
    _, _, init = planted(1)
    scores = _dask.map_images(_score, Xd, init, kind="score")
    out = {}
    prefixes = _graph_prefixes(lambda: out.update(s=scores.compute()))
    assert "planted" not in prefixes  # no task yields an image chunk
    assert "calm_np-score-getitem" in prefixes  # map and slice, fused
    np.testing.assert_allclose(out["s"], _score(X, init), rtol=1e-12)


def test_statistics_of_no_images_are_zero():
    _, _, init = planted(1)
    Xd = da.zeros((0, 1, 12, 11), chunks=(5, -1, -1, -1))
    stats = _dask.statistics(Xd, init)
    assert stats.n_samples == 0
    assert float(stats.log_likelihood) == 0.0
    np.testing.assert_array_equal(stats.sums, 0.0)


def test_statistics_refuses_chunked_image_axes():
    X, _, init = planted(8)
    Xd = da.from_array(X, chunks=(4, -1, 6, -1))
    with pytest.raises(ValueError, match=r"axis 0\) only.*\(6, 6\).*rechunk"):
        _dask.statistics(Xd, init)
    with pytest.raises(ValueError, match="axis 0"):
        _dask.map_images(_score, Xd, init)


def test_statistics_checks_shapes_on_the_client():
    X, _, init = planted(8)
    Xd = da.from_array(X, chunks=(4, -1, -1, -1))
    with pytest.raises(ValueError, match="channel"):
        _dask.statistics(Xd, np.ones((3, 2, 4, 3)))
    with pytest.raises(ValueError, match="padding"):
        _dask.statistics(Xd, init, padding=-1)
    with pytest.raises(TypeError, match="dask.array.Array"):
        _dask.statistics(X, init)
    with pytest.raises(ValueError, match="shape"):
        _dask.statistics(da.ones((3, 4), chunks=2), init)


def test_is_dask_array():
    X = np.zeros((2, 3, 3))
    assert not _dask.is_dask_array(X)
    assert _dask.is_dask_array(da.from_array(X))
    assert not _dask.is_dask_array(X.tolist())


def test_import_does_not_import_dask():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import calm_np
        from calm_np import _dask
        assert not _dask.is_dask_array(np.zeros(3))
        assert not _dask.is_dask_array(np.zeros(3))
        calm_np.sufficient_statistics(np.zeros((2, 5, 5)), np.ones((1, 2, 2)))
        bad = sorted(
            m for m in sys.modules
            if m.split(".")[0] in ("dask", "distributed")
        )
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(calm_np.__file__))),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# 2. lazy per-image maps -------------------------------------------------------


def _score(block, kernels, *, padding=0):
    return calm_np.log_likelihood(block, kernels, padding=padding)


def _pooled(block, kernels, *, padding=0):
    A = calm_np.log_joint(block, kernels, padding=padding)
    return logsumexp(A, axis=(2, 3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_map_images_is_lazy_and_equals_numpy(dtype):
    X, _, init = planted(23)
    X, init = X.astype(dtype), init.astype(dtype)
    Xd = da.from_array(X, chunks=((5, 1, 0, 17), -1, -1, -1))
    calls = []

    def counted(block, kernels, *, padding=0):
        calls.append(len(block))
        return _pooled(block, kernels, padding=padding)

    with dask.config.set(scheduler="sync"):
        features = _dask.map_images(counted, Xd, init, n_features=3, padding=1)
        scores = _dask.map_images(_score, Xd, init, padding=1)
        assert calls == []  # nothing computed yet
        assert _dask.is_dask_array(features) and _dask.is_dask_array(scores)
        assert features.shape == (23, 3) and scores.shape == (23,)
        assert features.chunks == (Xd.chunks[0], (3,))
        assert scores.chunks == (Xd.chunks[0],)
        assert features.dtype == scores.dtype == np.dtype(dtype)
        assert type(features._meta) is np.ndarray
        f, s = dask.compute(features, scores)
    assert sorted(calls) == sorted(Xd.chunks[0])
    tol = {"float32": dict(rtol=1e-5, atol=1e-4), "float64": dict(rtol=1e-12)}[dtype]
    np.testing.assert_allclose(f, _pooled(X, init, padding=1), **tol)
    np.testing.assert_allclose(s, _score(X, init, padding=1), **tol)
    assert f.dtype == s.dtype == np.dtype(dtype)


# 3. a LocalCluster of two worker processes ---------------------------------


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # loopback, any free port (not 8787)
        memory_limit="1GiB",
        silence_logs=logging.CRITICAL,
    )
    try:
        with distributed.Client(cluster, timeout=TIMEOUT) as c:
            c.wait_for_workers(2, timeout=TIMEOUT)
            yield c
    finally:
        cluster.close(timeout=30)


def _clear_transfer_logs(client):
    client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())


def _transfers(client):
    """What the workers sent since the logs were cleared: bytes and key names,
    and apart from them the bytes of messages that carried image chunks only."""

    def read(dask_worker):
        return [(e["keys"], e["compressed"]) for e in dask_worker.transfer_outgoing_log]

    nbytes, wire, prefixes, chunks = 0, 0, set(), 0
    for entries in client.run(read).values():
        for keys, compressed in entries:
            names = {key_split(k) for k in keys}
            if names == {"array"}:
                chunks += sum(keys.values())
                continue
            nbytes += sum(keys.values())
            wire += compressed
            prefixes |= names
    return nbytes, wire, prefixes, chunks


def _worker_chunk_counts(client, X):
    who_has = client.who_has(X)
    counts = {}
    for workers in who_has.values():
        for w in workers:
            counts[w] = counts.get(w, 0) + 1
    return counts


def test_cluster_statistics_equal_in_memory(client):
    X, _, init = planted(60, c=2)
    expected = calm_np.sufficient_statistics(X, init, padding=1)
    Xd = da.from_array(X, chunks=((9, 1, 20, 0, 30), -1, -1, -1))
    actual = run_bounded(_dask.statistics, Xd, init, padding=1, split_every=2)
    assert_statistics_equal(actual, expected)


@pytest.mark.parametrize("where", ["persisted", "read-on-workers"])
def test_cluster_moves_statistics_not_images(client, where):
    # 8 chunks of 100 images of 28x28, 627 KiB each
    if where == "persisted":
        X, _, init = planted(800, size=(28, 28), kernel=(5, 5))
        Xd = da.from_array(X, chunks=(100, -1, -1, -1)).persist()
        distributed.wait(Xd, timeout=TIMEOUT)
        assert len(_worker_chunk_counts(client, Xd)) == 2  # the data is spread
    else:
        X, Xd = lazy_images(800, 100, size=(28, 28))
        init = planted(1, kernel=(5, 5))[2]
    expected = calm_np.sufficient_statistics(X, init)
    _clear_transfer_logs(client)
    actual = run_bounded(_dask.statistics, Xd, init)
    nbytes, wire, prefixes, moved = _transfers(client)
    assert_statistics_equal(actual, expected)
    if where == "persisted":
        # The scheduler may hand a persisted chunk's task to an idle worker
        # (decide_worker weighs a short transfer against a busy queue): a
        # load-balancing move, not a gather; at most 2 of the 8 chunks move.
        assert moved <= 2 * X[:100].nbytes, moved
    else:  # read and reduced in one task: no image ever leaves its worker
        assert moved == 0, moved
    # besides those moves, only statistics, the kernels and the recipe left
    allowed = {"calm_np-statistics", "calm_np-sum", "ndarray", "original-planted"}
    assert prefixes <= allowed, prefixes
    # at most every chunk's statistics, the total, and the kernels and the
    # recipe to each worker; messages add a few hundred bytes of framing each
    stats_bytes = actual.counts.nbytes + actual.sums.nbytes + 8
    bound = (8 + 1) * (stats_bytes + 1024) + 2 * (init.nbytes + 2 * 1024)
    assert 0 < nbytes <= bound and 0 < wire <= bound, (nbytes, wire, bound)
    assert bound < X[:100].nbytes / 10  # a chunk of images could not hide in it


class KillOnce(distributed.diagnostics.plugin.SchedulerPlugin):
    """Kill the worker that just finished the ``after``-th chunk statistics.

    Runs in the scheduler, which a LocalCluster keeps in this process, so a
    plain ``os.kill`` of the worker's pid is a real process death: the
    worker's results are lost and its running task is cut off.
    """

    name = "calm-np-kill-once"

    def __init__(self, pids, after):
        self.pids, self.after = pids, after
        self.seen, self.killed = 0, []

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if self.killed or finish != "memory":
            return
        if key_split(key) != "calm_np-statistics":
            return
        self.seen += 1
        if self.seen < self.after:
            return
        (worker,) = self.scheduler.tasks[key].who_has
        pid = self.pids.get(worker.address)
        if pid is not None:
            self.killed.append(worker.address)
            os.kill(pid, signal.SIGKILL)


def _install_killer(client, after):
    pids = client.run(os.getpid)
    plugin = KillOnce(pids, after)
    client.register_plugin(plugin)
    return plugin.name


def _killed(client, name):
    def read(dask_scheduler):
        plugin = dask_scheduler.plugins.pop(name)
        return plugin.killed

    return client.run_on_scheduler(read)


def test_cluster_statistics_survive_a_killed_worker(client):
    X, _, init = planted(400, size=(20, 20), kernel=(5, 5))
    expected = calm_np.sufficient_statistics(X, init, padding=2)
    Xd = da.from_array(X, chunks=(25, -1, -1, -1)).persist()
    distributed.wait(Xd, timeout=TIMEOUT)
    name = _install_killer(client, after=3)
    try:
        actual = run_bounded(_dask.statistics, Xd, init, padding=2, split_every=2)
    finally:
        killed = _killed(client, name)
        client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarts it
    assert len(killed) == 1  # one kill, mid-computation, and the sum survived
    assert_statistics_equal(actual, expected)


def test_cluster_map_images_equals_numpy(client):
    X, _, init = planted(50)
    Xd = da.from_array(X, chunks=(9, -1, -1, -1))
    features = _dask.map_images(_pooled, Xd, init, n_features=3, padding=1)
    scores = _dask.map_images(_score, Xd, init, padding=1)
    f, s = run_bounded(dask.compute, features, scores)
    np.testing.assert_allclose(f, _pooled(X, init, padding=1), rtol=1e-12)
    np.testing.assert_allclose(s, _score(X, init, padding=1), rtol=1e-12)


# 4. the estimator on the cluster ---------------------------------------------

FIT = dict(
    n_kernels=3,
    kernel_size=5,
    padding=1,
    learn_weights=True,
    max_iter=6,
    tol=1e-8,
    random_state=0,
)


def _fit(X, **params):
    with warnings.catch_warnings():
        # a short fit on purpose; the warnings are tested elsewhere
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        warnings.simplefilter("ignore", calm_np.DeadKernelWarning)
        return calm_np.ConvolutionalMixture(**{**FIT, **params}).fit(X)


def assert_same_fit(actual, expected):
    assert actual.n_iter_ == expected.n_iter_
    np.testing.assert_allclose(
        actual.lower_bounds_, expected.lower_bounds_, rtol=1e-12, atol=0
    )
    assert type(actual.kernels_) is np.ndarray
    np.testing.assert_allclose(actual.kernels_, expected.kernels_, atol=1e-9)
    np.testing.assert_allclose(actual.weights_, expected.weights_, atol=1e-12)


@pytest.fixture(scope="module")
def images():
    X, _, _ = planted(150, size=(14, 14), kernel=(5, 5), seed=1)
    return X


@pytest.mark.parametrize("latent", ["image", "patch"])
def test_fit_on_dask_equals_numpy_fit_threaded(images, latent):
    expected = _fit(images, latent=latent)
    actual = _fit(da.from_array(images, chunks=(33, -1, -1, -1)), latent=latent)
    assert_same_fit(actual, expected)


def test_cluster_fit_equals_numpy_fit(client, images):
    expected = _fit(images)
    Xd = da.from_array(images, chunks=((40, 1, 9, 0, 100), -1, -1, -1)).persist()
    distributed.wait(Xd, timeout=TIMEOUT)
    actual = run_bounded(_fit, Xd)
    assert len(expected.lower_bounds_) >= 3
    assert_same_fit(actual, expected)


def test_cluster_fit_survives_a_killed_worker(client, images):
    expected = _fit(images)
    Xd = da.from_array(images, chunks=(10, -1, -1, -1)).persist()
    distributed.wait(Xd, timeout=TIMEOUT)
    # 15 chunks per pass: the kill lands in the middle of the second pass
    name = _install_killer(client, after=15 + 7)
    try:
        actual = run_bounded(_fit, Xd)
    finally:
        killed = _killed(client, name)
        client.wait_for_workers(2, timeout=TIMEOUT)
    assert len(killed) == 1
    assert_same_fit(actual, expected)


def test_cluster_transform_and_score_samples_are_lazy(client, images):
    model = _fit(images, max_iter=2)
    Xd = da.from_array(images, chunks=(40, -1, -1, -1))
    features = model.transform(Xd)
    scores = model.score_samples(Xd)
    for out, shape in ((features, (150, 3)), (scores, (150,))):
        assert _dask.is_dask_array(out)
        assert out.shape == shape and out.chunks[0] == Xd.chunks[0]
        assert out.dtype == np.float64 and type(out._meta) is np.ndarray
    f, s = run_bounded(dask.compute, features, scores)
    np.testing.assert_allclose(f, model.transform(images), rtol=1e-12)
    np.testing.assert_allclose(s, model.score_samples(images), rtol=1e-12)


# 5. CuPy chunks (GPU machine only) -------------------------------------------


@pytest.mark.cupy
def test_statistics_cupy_chunks_follow_the_chunks():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy installed but no GPU")
    except Exception as exc:  # noqa: BLE001 - any CUDA error means no GPU
        pytest.skip(f"cupy installed but no usable GPU ({exc})")
    X, _, init = planted(30)
    expected = calm_np.sufficient_statistics(X, init, padding=1)
    Xd = da.from_array(X, chunks=(7, -1, -1, -1)).map_blocks(cupy.asarray)
    # host NumPy kernels move to the chunks' namespace
    actual = _dask.statistics(Xd, init, padding=1)
    assert isinstance(actual.sums, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(actual.sums), expected.sums, rtol=1e-10)
    scores = _dask.map_images(_score, Xd, cupy.asarray(init), padding=1)
    assert isinstance(scores._meta, cupy.ndarray)
    np.testing.assert_allclose(
        cupy.asnumpy(scores.compute()), _score(X, init, padding=1), rtol=1e-10
    )
