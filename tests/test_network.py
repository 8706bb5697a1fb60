"""ConvolutionalMixtureNetwork: stacking, streaming, readout, persistence, errors."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from _helpers import assert_close, readonly_memmap
from hypothesis import given
from hypothesis import strategies as st

import calm_np
from calm_np import (
    ConvolutionalMixture,
    ConvolutionalMixtureNetwork,
    NotFittedError,
    _network,
)
from calm_np._em import _Batch
from calm_np._xp import array_namespace, to_numpy

pytestmark = [
    pytest.mark.filterwarnings("ignore::calm_np.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::calm_np.DeadKernelWarning"),
    pytest.mark.filterwarnings("ignore:lbfgs failed to converge"),
]


def layer(k=3, size=3, **params):
    params = {"max_iter": 4, "random_state": 0, "features": "triangle", **params}
    return ConvolutionalMixture(k, kernel_size=size, **params)


def net(**params):
    layers = params.pop("layers", [layer(4, pooling=2), layer(3, pooling=2)])
    return ConvolutionalMixtureNetwork(layers, **params)


def noise(seed=0, shape=(30, 1, 12, 12)):
    return np.random.default_rng(seed).standard_normal(shape)


def pooled_triangle_by_hand(X, model, size=2):
    """Triangle maps by explicit patch distances, then size×size means."""
    from numpy.lib.stride_tricks import sliding_window_view

    K, C, kh, kw = model.kernels_.shape
    patches = sliding_window_view(X, (kh, kw), axis=(2, 3))  # n, C, Ho, Wo, kh, kw
    n, _, Ho, Wo = patches.shape[:4]
    patches = np.moveaxis(patches, 1, 3).reshape(n, Ho, Wo, -1)
    flat = model.kernels_.reshape(K, -1)
    dist = np.linalg.norm(patches[..., None, :] - flat, axis=-1)  # n, Ho, Wo, K
    act = np.maximum(dist.mean(axis=-1, keepdims=True) - dist, 0)
    act = np.moveaxis(act, -1, 1)
    h, w = Ho // size, Wo // size
    act = act[:, :, : h * size, : w * size]
    return act.reshape(n, K, h, size, w, size).mean((3, 5))


# greedy stacking --------------------------------------------------------------------


def test_layer_two_is_fitted_on_pooled_standardised_triangle_maps():
    X = noise()
    model = net().fit(X)
    first = model.layers_[0]
    pooled = pooled_triangle_by_hand(X, first)
    mean, scale = model.norms_[0]
    np.testing.assert_allclose(mean, pooled.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(scale, pooled.std(axis=(0, 2, 3)), rtol=1e-9)
    encoder = model._encoder(model.layers_, model.norms_, 1)
    expected = (pooled - mean[:, None, None]) / scale[:, None, None]
    np.testing.assert_allclose(encoder(X), expected, rtol=1e-9, atol=1e-9)


def test_greedy_fit_equals_fitting_layer_two_by_hand_bit_for_bit():
    X = noise(1)
    model = net().fit(X)
    first = model.layers_[0]
    log_w = np.log(first.weights_)
    # layer 1's triangle maps as the readouts compute them
    act = calm_np._readouts.triangle_maps(_Batch(X, first.kernels_, log_w))
    n, k, H, W = act.shape
    pooled = act[:, :, : H // 2 * 2, : W // 2 * 2]
    pooled = pooled.reshape(n, k, H // 2, 2, W // 2, 2).mean(axis=(3, 5))
    count = n * (H // 2) * (W // 2)
    mean = pooled.sum(axis=(0, 2, 3)) / count
    scale = np.sqrt((pooled * pooled).sum(axis=(0, 2, 3)) / count - mean * mean)
    maps = (pooled - mean[None, :, None, None]) / scale[None, :, None, None]
    by_hand = layer(3, pooling=2).fit(maps)
    assert np.array_equal(model.layers_[1].kernels_, by_hand.kernels_)
    assert model.layers_[1].lower_bounds_ == by_hand.lower_bounds_
    # the layers passed in are cloned, never fitted
    assert not hasattr(model.layers[0], "kernels_")


def test_channels_of_each_layer_are_the_kernels_below():
    layers = [layer(5, 3), layer(4, 2), layer(2, 2)]
    model = net(layers=layers).fit(noise(2, (12, 2, 20, 20)))
    assert [m.n_channels_in_ for m in model.layers_] == [2, 5, 4]
    assert model.layers_[2].kernels_.shape == (2, 4, 2, 2)
    assert [m[0].shape for m in model.norms_] == [(5,), (4,)]


def test_without_normalisation_the_maps_are_only_pooled():
    X = noise(3)
    model = net(normalize=None, pool_size=1).fit(X)
    mean, scale = model.norms_[0]
    assert (mean.tolist(), scale.tolist()) == ([0.0], [1.0])
    encoder = model._encoder(model.layers_, model.norms_, 1)
    expected = pooled_triangle_by_hand(X, model.layers_[0], size=1)
    np.testing.assert_allclose(encoder(X), expected, rtol=1e-9, atol=1e-9)


def test_posterior_activation_is_a_softmax_over_kernels():
    X = noise(4)
    model = net(activation="posterior", normalize=None).fit(X)
    encoder = model._encoder(model.layers_, model.norms_, 1)
    np.testing.assert_allclose(encoder(X).sum(axis=1), 1.0, rtol=1e-12)


def test_whitened_maps_are_decorrelated_principal_components():
    X = noise(23, (40, 1, 12, 12))
    model = net(normalize="whiten", n_components=3, pool_size=1).fit(X)
    mean, W = model.norms_[0]
    assert W.shape == (3, 4) and model.layers_[1].n_channels_in_ == 3
    pooled = pooled_triangle_by_hand(X, model.layers_[0], size=1)
    np.testing.assert_allclose(mean, pooled.mean(axis=(0, 2, 3)), rtol=1e-9)
    Z = model._encoder(model.layers_, model.norms_, 1)(X)
    flat = np.moveaxis(Z, 1, -1).reshape(-1, 3)
    cov = np.cov(flat, rowvar=False, bias=True)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-9)
    lam = np.diag(cov)  # lambda / (lambda + eps): below 1, largest first
    assert np.all(lam < 1) and np.all(np.diff(lam) <= 1e-12)
    # all the axes, cached or not, saved and read back
    for cache in (None, "memory", "disk"):
        full = net(normalize="whiten", batch_size=7, cache=cache).fit(X)
        assert full.norms_[0][1].shape == (4, 4)
        if cache is None:
            ref = full
        fitted_same(full, ref)


def test_whitened_network_saves_and_loads(tmp_path):
    X = noise(24)
    model = net(normalize="whiten", n_components=2).fit(X)
    model.save(tmp_path / "net.npz")
    back = ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    assert (back.normalize, back.n_components) == ("whiten", 2)
    assert np.array_equal(back.norms_[0][1], model.norms_[0][1])
    assert np.array_equal(back.transform(X), model.transform(X))


# streaming --------------------------------------------------------------------------


def fitted_same(a, b):
    for la, lb in zip(a.layers_, b.layers_, strict=True):
        np.testing.assert_allclose(la.kernels_, lb.kernels_, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(la.lower_bounds_, lb.lower_bounds_, rtol=1e-12)
    for (ma, sa), (mb, sb) in zip(a.norms_, b.norms_, strict=True):
        np.testing.assert_allclose(ma, mb, rtol=1e-12)
        np.testing.assert_allclose(sa, sb, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [4, 7, None])
def test_batch_size_does_not_change_the_network(batch_size):
    X = noise(5, (25, 1, 12, 12))
    ref = net().fit(X)
    model = net(batch_size=batch_size).fit(X)
    fitted_same(model, ref)
    np.testing.assert_allclose(model.transform(X), ref.transform(X), rtol=1e-10)


def test_memmap_iterable_and_array_give_the_same_network(tmp_path):
    X = noise(6, (25, 1, 12, 12))
    path = tmp_path / "images.dat"
    mm = readonly_memmap(X, path)
    ref = net(batch_size=6).fit(X)

    class Reiterable:
        def __iter__(self):
            return iter(X[i : i + 9] for i in range(0, 25, 9))

    for data in (mm, [X[i : i + 4] for i in range(0, 25, 4)], Reiterable()):
        model = net(batch_size=6).fit(data)
        fitted_same(model, ref)
        np.testing.assert_allclose(model.transform(data), ref.transform(X), rtol=1e-10)


def _count_mapped_images(monkeypatch):
    """A list that gets the batch size of every batch a layer's maps are
    computed for (``_network._step``)."""
    seen = []
    real = _network._step

    def spy(batch, *args):
        seen.append(batch.shape[0])
        return real(batch, *args)

    monkeypatch.setattr(_network, "_step", spy)
    return seen


def test_maps_are_computed_one_batch_at_a_time(monkeypatch):
    X = noise(7, (40, 1, 12, 12))
    seen = _count_mapped_images(monkeypatch)
    init = np.random.default_rng(0).standard_normal((3, 4, 3, 3))
    model = net(layers=[layer(4), layer(3, init=init)], batch_size=8).fit(X)
    assert seen and max(seen) <= 8
    assert sum(seen) >= 4 * 40  # every EM pass of layer 2 maps all the images
    seen.clear()
    model.transform(X)
    assert max(seen) <= 8


def test_dask_input_fits_and_transforms_lazily():
    da = pytest.importorskip("dask.array")
    X = noise(8, (20, 1, 12, 12))
    ref = net(batch_size=5).fit(X)
    model = net(batch_size=5).fit(da.from_array(X, chunks=(5, 1, 12, 12)))
    fitted_same(model, ref)
    lazy = model.transform(da.from_array(X, chunks=(5, 1, 12, 12)))
    assert type(lazy).__module__.startswith("dask")
    np.testing.assert_allclose(lazy.compute(), ref.transform(X), rtol=1e-10)


# the cache of the maps -----------------------------------------------------------


@pytest.mark.parametrize("cache", ["memory", "disk", "auto"])
def test_a_cache_gives_the_same_network(cache):
    X = noise(20, (25, 1, 12, 12))
    layers = [layer(4, pooling=2), layer(3, 2, pooling=2), layer(2, 2)]
    ref = net(layers=layers, batch_size=6).fit(X)
    model = net(layers=layers, batch_size=6, cache=cache).fit(X)
    fitted_same(model, ref)
    np.testing.assert_allclose(model.transform(X), ref.transform(X), rtol=1e-10)


def test_a_cache_computes_the_maps_below_once_per_image(monkeypatch):
    X = noise(7, (40, 1, 12, 12))
    seen = _count_mapped_images(monkeypatch)
    init = np.random.default_rng(0).standard_normal((3, 4, 3, 3))
    layers = [layer(4), layer(3, init=init)]
    for cache in ("memory", "disk"):
        seen.clear()
        net(layers=layers, batch_size=8, cache=cache).fit(X)
        assert sum(seen) == 40 and max(seen) <= 8  # one E-step of layer 1 per image
    seen.clear()
    net(layers=layers, batch_size=8).fit(X)
    assert sum(seen) >= 4 * 40  # without: every EM pass of layer 2 maps them all


def test_auto_cache_goes_to_disk_above_its_bound_and_cleans_up(monkeypatch, tmp_path):
    import os
    import tempfile

    X = noise(21, (25, 1, 12, 12))
    ref = net(batch_size=6, cache="memory").fit(X)
    made, real_allocate = [], _network._Cache.allocate

    def allocate(self, *args):
        out = real_allocate(self, *args)
        if isinstance(out, np.memmap):
            made.append(out.filename)
        return out

    monkeypatch.setattr(_network._Cache, "allocate", allocate)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_network, "CACHE_MEMORY_BYTES", 100)
    model = net(batch_size=6, cache="auto").fit(X)
    fitted_same(model, ref)
    assert made and all(str(p).startswith(str(tmp_path)) for p in made)
    assert os.listdir(tmp_path) == []  # the folder and its memmap are gone
    monkeypatch.setattr(_network, "CACHE_MEMORY_BYTES", 10**9)
    made.clear()
    net(batch_size=6, cache="auto").fit(X)
    assert made == []  # small maps stay in memory


def test_a_failed_cached_fit_leaves_no_files(monkeypatch, tmp_path):
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail(*args):
        raise RuntimeError("boom")

    model = net(cache="disk")
    monkeypatch.setattr(ConvolutionalMixture, "transform", fail)
    monkeypatch.setattr(_network, "_step", fail)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(noise())
    assert os.listdir(tmp_path) == [] and not hasattr(model, "layers_")


def test_cache_on_memmap_iterable_and_dask_input(tmp_path):
    X = noise(22, (25, 1, 12, 12))
    ref = net(batch_size=6).fit(X)
    inputs = [readonly_memmap(X, tmp_path / "images.dat")]
    inputs.append([X[i : i + 4] for i in range(0, 25, 4)])
    try:
        import dask.array as da

        inputs.append(da.from_array(X, chunks=(5, 1, 12, 12)))
    except ImportError:  # pragma: no cover
        pass
    for data in inputs:
        for cache in ("memory", "disk"):
            model = net(batch_size=6, cache=cache).fit(data)
            fitted_same(model, ref)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_every_backend_with_a_cache_gives_the_numpy_network(backend, cache):
    X = noise(10, (12, 1, 10, 10))
    ref = net(batch_size=5).fit(X)
    model = net(batch_size=5, cache=cache).fit(backend.asarray(X))
    for a, b in zip(model.layers_, ref.layers_, strict=True):
        assert array_namespace(a.kernels_) is array_namespace(backend.asarray(X))
        assert_close(a.kernels_, b.kernels_)


# readout ------------------------------------------------------------------------------


def test_transform_concatenates_each_layers_readout():
    X = noise(9)
    layers = [layer(4, pooling=3), layer(3, pooling=2)]
    model = net(layers=layers).fit(X)
    F = model.transform(X)
    assert F.shape == (30, model.n_features_) == (30, 4 * 9 + 3 * 4)
    assert np.array_equal(F[:, :36], model.layers_[0].transform(X))
    encoder = model._encoder(model.layers_, model.norms_, 1)
    assert np.array_equal(F[:, 36:], model.layers_[1].transform(encoder(X)))
    top = net(layers=layers, readout="top").fit(X)
    assert top.n_features_ == 12
    assert np.array_equal(top.transform(X), F[:, 36:])
    assert np.array_equal(model.fit_transform(X), F)


def test_whitened_triangle_layers_read_out_exactly_as_their_transform():
    # the network reads layer 1's triangle maps and its readout in one pass
    X = noise(26, (20, 1, 12, 12))
    white = dict(latent="patch", whiten=True, learn_variance=True, pooling=3)
    layers = [layer(6, 3, **white), layer(3, 2, pooling=2, latent="patch")]
    model = net(layers=layers, batch_size=7).fit(X)
    F = model.transform(X)
    assert np.array_equal(F[:, :54], model.layers_[0].transform(X))
    encoder = model._encoder(model.layers_, model.norms_, 1)
    np.testing.assert_allclose(
        F[:, 54:], model.layers_[1].transform(encoder(X)), rtol=1e-12, atol=1e-12
    )


def test_transform_refuses_other_channels_and_unfitted():
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        net().transform(noise())
    model = net().fit(noise())
    with pytest.raises(ValueError, match="X has 2 channel"):
        model.transform(noise(0, (3, 2, 12, 12)))


# backends ---------------------------------------------------------------------------


def test_every_backend_gives_the_numpy_network(backend):
    X = noise(10, (12, 1, 10, 10))
    ref = net(batch_size=5).fit(X)
    model = net(batch_size=5).fit(backend.asarray(X))
    for a, b in zip(model.layers_, ref.layers_, strict=True):
        assert array_namespace(a.kernels_) is array_namespace(backend.asarray(X))
        assert_close(a.kernels_, b.kernels_)
    F = model.transform(backend.asarray(X))
    assert array_namespace(F) is array_namespace(backend.asarray(X))
    # the triangle's square root of a near-zero distance amplifies round-off
    assert_close(F, ref.transform(X), rtol=1e-7, atol=1e-7)


# persistence ------------------------------------------------------------------------


def test_save_load_is_bit_exact(tmp_path):
    X = noise(11)
    model = net(pool_size=1, readout="top").fit(X)
    model.save(tmp_path / "net.npz")
    back = ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    assert back.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    assert (back.pool_size, back.readout) == (1, "top")
    for a, b in zip(back.layers_, model.layers_, strict=True):
        assert np.array_equal(a.kernels_, b.kernels_)
        assert a.lower_bounds_ == b.lower_bounds_
    assert np.array_equal(back.norms_[0][1], model.norms_[0][1])
    assert np.array_equal(back.transform(X), model.transform(X))


def test_load_onto_another_backend(tmp_path):
    torch = pytest.importorskip("torch")
    model = net().fit(noise(12))
    model.save(tmp_path / "net.npz")
    import array_api_compat.torch as xp

    back = ConvolutionalMixtureNetwork.load(tmp_path / "net.npz", xp=xp)
    assert isinstance(back.layers_[1].kernels_, torch.Tensor)
    F = back.transform(torch.asarray(noise(13)))
    assert_close(F, model.transform(noise(13)))


def rewrite(src, dst, change):
    """Copy the .npz at ``src`` to ``dst``, letting ``change(arrays)`` edit it."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)


def set_header(key, value):
    def change(arrays):
        header = json.loads(bytes(arrays["header"]).decode())
        header[key] = value
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)

    return change


def corrupt_layer(arrays):
    raw = bytearray(arrays["layer1"].tobytes())
    buf = io.BytesIO(bytes(raw))
    with np.load(buf) as data:
        inner = {name: data[name] for name in data.files}
    inner["kernels"] = inner["kernels"][:, :, :1]
    out = io.BytesIO()
    np.savez(out, **inner)
    arrays["layer1"] = np.frombuffer(out.getvalue(), np.uint8)


HOSTILE = [
    (lambda a: a.pop("layer1"), "are not those of a 2-layer network"),
    (lambda a: a.update(extra=np.zeros(3)), "are not those of a 2-layer network"),
    (lambda a: a.update(norm_mean0=np.zeros(7)), "statistics of 7 channels"),
    (lambda a: a.update(norm_scale0=-a["norm_scale0"]), "layer 0's statistics"),
    (
        lambda a: a.update(layer0=a["layer0"].astype(np.float64)),
        "its layer0 array has shape",
    ),
    (lambda a: a.update(layer0=a["layer0"][:100]), "layer 0 is not valid"),
    (corrupt_layer, "layer 1 is not valid"),
    (set_header("format", "calm_np.ConvolutionalMixture"), "not a calm_np network"),
    (set_header("format_version", 99), "format version 99; upgrade calm_np"),
    (set_header("n_layers", 3), "are not those of a 3-layer network"),
    (set_header("n_layers", "2"), "bad network header"),
    (set_header("params", {"pool_size": 2}), "bad network header"),
    (
        set_header(
            "params",
            dict(
                activation="triangle",
                batch_size=None,
                normalize=None,
                pool_size=0,
                readout="concat",
            ),
        ),  # fmt: skip
        "bad parameter: pool_size must be >= 1, got 0",
    ),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE)
def test_hostile_network_files_are_refused(tmp_path, change, message):
    model = net().fit(noise(14))
    model.save(tmp_path / "net.npz")
    rewrite(tmp_path / "net.npz", tmp_path / "bad.npz", change)
    with pytest.raises(ValueError, match=message):
        ConvolutionalMixtureNetwork.load(tmp_path / "bad.npz")


def test_pickles_and_non_zip_files_are_refused(tmp_path):
    model = net().fit(noise(15))
    model.save(tmp_path / "net.npz")
    pickled = np.array([object()], dtype=object)
    add_pickle = lambda a: a.update(layer0=pickled)  # noqa: E731
    rewrite(tmp_path / "net.npz", tmp_path / "bad.npz", add_pickle)
    with zipfile.ZipFile(tmp_path / "bad.npz") as zf:
        assert "layer0.npy" in zf.namelist()
    with pytest.raises(ValueError, match="object arrays.*refusing to unpickle"):
        ConvolutionalMixtureNetwork.load(tmp_path / "bad.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="truncated or not an .npz file"):
        ConvolutionalMixtureNetwork.load(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="not a calm_np network file"):
        layer().fit(noise()).save(tmp_path / "layer.npz")
        ConvolutionalMixtureNetwork.load(tmp_path / "layer.npz")


# scikit-learn protocol -------------------------------------------------------------


def test_clone_and_pipeline():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = net(pool_size=1)
    copy = sklearn.clone(model)
    assert copy.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    assert copy.layers[0] is not model.layers[0]
    assert copy.layers[0].get_params() == model.layers[0].get_params()
    assert copy.set_params(pool_size=2).pool_size == 2
    with pytest.raises(ValueError, match="invalid parameter 'pools'"):
        copy.set_params(pools=3)
    X, y = noise(16), np.arange(30) % 2
    pipe = make_pipeline(model, LogisticRegression(max_iter=50)).fit(X, y)
    assert pipe.predict(X).shape == (30,)
    assert len(pipe[0].layers_) == 2


# errors, before any work ------------------------------------------------------------


ERRORS = [
    (dict(layers=[]), ValueError, "layers must hold at least one ConvolutionalMixture"),
    (
        dict(layers=layer()),
        TypeError,
        "layers must be a list of ConvolutionalMixture estimators, got "
        "ConvolutionalMixture",
    ),
    (
        dict(layers=[layer(), 3]),
        TypeError,
        "layers[1] must be a ConvolutionalMixture, got int",
    ),
    (
        dict(layers=[layer(), layer(0)]),
        ValueError,
        "layers[1]: n_kernels must be >= 1, got 0",
    ),
    (dict(pool_size=0), ValueError, "pool_size must be >= 1, got 0"),
    (dict(pool_size=2.0), TypeError, "pool_size must be an int, got 2.0"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    (
        dict(n_components=2),
        ValueError,
        "n_components is for normalize='whiten'",
    ),
    (
        dict(cache="ram"),
        ValueError,
        "cache must be one of (None, 'auto', 'memory', 'disk'), got 'ram'",
    ),
    (
        dict(activation="relu"),
        ValueError,
        "activation must be one of ('triangle', 'posterior'), got 'relu'",
    ),
    (
        dict(readout="all"),
        ValueError,
        "readout must be one of ('concat', 'top'), got 'all'",
    ),
    (
        dict(layers=[layer(4, 3), layer(2, 6)]),
        ValueError,
        "layers[1]: kernel size (6, 6) is larger than its padded input (5, 5) "
        "(layers[0]'s maps pooled 2x2 are 5x5); use smaller kernels, more padding "
        "or a smaller pool_size",
    ),
    (
        dict(layers=[layer(4, 13)]),
        ValueError,
        "layers[0]: kernel size (13, 13) is larger than its padded input (12, 12) "
        "(the images are 12x12)",
    ),
    (
        dict(layers=[layer(4, 11), layer(2, 1)], pool_size=3),
        ValueError,
        "layers[0]'s maps are smaller than one 3x3 pooling cell",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("params", "error", "message"), ERRORS)
def test_bad_networks_are_refused_before_any_work(monkeypatch, params, error, message):
    calls = []
    monkeypatch.setattr(ConvolutionalMixture, "fit", lambda *a: calls.append(a))
    model = net(**params)
    with pytest.raises(error) as info:
        model.fit(noise())
    assert str(info.value).startswith(message)
    assert calls == [] and not hasattr(model, "layers_")


def test_a_failed_fit_keeps_the_fitted_network():
    model = net().fit(noise())
    kernels = model.layers_[1].kernels_
    with pytest.raises(ValueError, match="contains NaN"):
        bad = noise()
        bad[-1, 0, 0, 0] = np.nan
        model.fit(bad)
    assert model.layers_[1].kernels_ is kernels


# property ---------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1),
    k1=st.integers(1, 4),
    k2=st.integers(1, 3),
    pool=st.integers(1, 2),
    activation=st.sampled_from(["triangle", "posterior"]),
)
def test_each_layers_objective_never_decreases(seed, k1, k2, pool, activation):
    X = noise(seed % 1000, (10, 1, 9, 9))
    layers = [layer(k1, 3, random_state=seed), layer(k2, 2, random_state=seed)]
    model = net(layers=layers, pool_size=pool, activation=activation).fit(X)
    for fitted in model.layers_:
        bounds = np.asarray(fitted.lower_bounds_)
        assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds).max())
    assert to_numpy(model.transform(X)).shape == (10, model.n_features_)


def test_whitened_maps_on_every_backend(backend):
    X = noise(25, (12, 1, 10, 10))
    ref = net(batch_size=5, normalize="whiten", n_components=3).fit(X)
    model = net(batch_size=5, normalize="whiten", n_components=3, cache="memory")
    model.fit(backend.asarray(X))
    for a, b in zip(model.layers_, ref.layers_, strict=True):
        assert_close(a.kernels_, b.kernels_)
    F = model.transform(backend.asarray(X))
    assert_close(F, ref.transform(X), rtol=1e-7, atol=1e-7)
