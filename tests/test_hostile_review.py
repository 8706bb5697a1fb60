"""Hostile input found by reviews of the whole library: most cases failed before
their mend (silent NaN, data loss, aliasing, a crash instead of a ``ValueError``);
the others guard a mend against its own regressions (large but finite models,
symbolic links, permissions, devices and hard links).

The cases are grouped by the standard they hold: nothing produces NaN
silently; no data is lost (saves are atomic and reload bit-exact, fitted
state never aliases the caller's arrays); batching does not change what is
refused; tampered files are refused with a ``ValueError`` naming the file.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

import calm_np
from calm_np import ConvolutionalMixture, ConvolutionalMixtureNetwork
from calm_np._warnings import DeadKernelWarning
from calm_np._xp import to_numpy

RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 1, 8, 8))
K = RNG.standard_normal((3, 1, 3, 3))


def fit(model, data=X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(data)


def small(**kw):
    return ConvolutionalMixture(
        **{"n_kernels": 3, "kernel_size": 3, "max_iter": 2, **kw}
    )


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
        func(X.astype(dtype), kernels.astype(dtype), variance=variance)


def test_the_overflow_bound_still_lets_large_finite_models_through():
    """Kernels of norm 1e150 (squares 1e300) stay inside float64: no error, no NaN."""
    P = calm_np.posterior(X, K * 1e150)
    assert np.isfinite(P).all()
    assert np.isfinite(calm_np.log_joint(X, K * 1e150)).all()


def test_torch_float32_overflow_is_refused():
    torch = pytest.importorskip("torch")
    Xt = torch.asarray(X, dtype=torch.float32)
    with pytest.raises(ValueError, match="torch.float32's range"):
        calm_np.posterior(Xt, torch.asarray(K * 1e19, dtype=torch.float32))


def test_a_model_file_whose_variance_has_no_finite_inverse_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    fit(small(learn_variance=True)).save(path)
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays["header"]).decode())
    header["variance"] = 1e-310
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="no finite 1/σ²"):
        ConvolutionalMixture.load(path)


def test_score_averages_in_float64():
    """float32 scores near the dtype's limit: their float32 mean overflowed."""
    X32 = (np.tile(X, (4, 1, 1, 1)) / np.abs(X).max() * 2.2e18).astype(np.float32)
    m = fit(small(max_iter=1), X32)
    values = to_numpy(m.score_samples(X32))
    assert np.isfinite(values).all()
    assert m.score(X32) == pytest.approx(float(np.mean(values, dtype=np.float64)))
    assert np.isfinite(m.score(X32))


# -- no data is lost ----------------------------------------------------------------


def test_fitted_kernels_never_alias_the_init_array():
    init = RNG.standard_normal((3, 1, 3, 3))
    m = fit(small(init=init, max_iter=0))
    assert not np.shares_memory(m.kernels_, init)
    kept = init.copy()
    init[:] = 0  # the caller edits its array: the model keeps its kernels
    np.testing.assert_array_equal(m.kernels_, kept)
    m.kernels_[:] = 1  # and the other way round: init is untouched
    np.testing.assert_array_equal(init, 0)


@pytest.mark.parametrize(
    "params",
    [dict(kernel_size=np.array([3, 3])), dict(pooling=np.array([1, 2]))],
)
def test_numpy_valued_parameters_save_and_reload(params, tmp_path):
    m = fit(small(**params))
    m.save(tmp_path / "m.npz")
    back = ConvolutionalMixture.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.kernels_, m.kernels_)
    np.testing.assert_array_equal(back.transform(X), m.transform(X))


def test_network_with_numpy_int_parameters_saves_and_reloads(tmp_path):
    layers = [
        small(latent="patch", features="triangle"),
        small(kernel_size=2, latent="patch", features="triangle"),
    ]
    net = ConvolutionalMixtureNetwork(
        layers, pool_size=np.int64(2), batch_size=np.int64(4)
    )
    fit(net)
    net.save(tmp_path / "net.npz")
    back = ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(back.transform(X), net.transform(X))


def test_longdouble_images_fit_in_float64_and_reload(tmp_path):
    m = fit(small(max_iter=1), X.astype(np.longdouble))
    assert m.kernels_.dtype == np.float64
    m.save(tmp_path / "m.npz")
    back = ConvolutionalMixture.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.kernels_, m.kernels_)


def test_a_model_whose_dtype_no_file_holds_is_refused_before_writing(tmp_path):
    path = tmp_path / "m.npz"
    m = fit(small())
    m.save(path)
    before = path.read_bytes()
    m.kernels_ = m.kernels_.astype(np.longdouble)
    with pytest.raises(ValueError, match="cannot save kernels of dtype"):
        m.save(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["model", "network"])
def test_a_failed_save_leaves_the_previous_file_intact(kind, tmp_path, monkeypatch):
    if kind == "model":
        m, cls = fit(small()), ConvolutionalMixture
    else:
        layers = [
            small(latent="patch", features="triangle"),
            small(kernel_size=2, latent="patch", features="triangle"),
        ]
        m, cls = fit(ConvolutionalMixtureNetwork(layers)), ConvolutionalMixtureNetwork
    path = tmp_path / "m.npz"
    m.save(path)
    before = path.read_bytes()

    savez = np.savez

    def broken_savez(fh, **arrays):  # writes half the target, then fails
        if kind == "network" and "layer0" not in arrays:
            return savez(fh, **arrays)  # a layer's own file: written whole
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temporary file left
    cls.load(path)


def test_a_saved_file_gets_the_permissions_of_a_plain_open(tmp_path):
    (tmp_path / "plain").write_bytes(b"")
    fit(small()).save(tmp_path / "m.npz")
    mode = os.stat(tmp_path / "m.npz").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain").st_mode & 0o777


# -- batching does not change what is refused --------------------------------------


def test_a_list_of_batches_refuses_more_kernels_than_patches_as_an_array_does():
    too_many = dict(n_kernels=100, kernel_size=3, max_iter=1, random_state=0)
    for data in (X[:2], [X[:1], X[1:2]]):
        with pytest.raises(ValueError, match="n_kernels=100 is more than the 72"):
            fit(ConvolutionalMixture(**too_many), data)


def test_init_random_may_have_more_kernels_than_patches():
    """Noise kernels are not drawn from the patches."""
    m = fit(ConvolutionalMixture(100, kernel_size=3, init="random", max_iter=1), X[:2])
    assert m.kernels_.shape[0] == 100


def test_a_list_of_empty_batches_is_refused_clearly():
    with pytest.raises(ValueError, match="X contains no images"):
        fit(small(), [X[:0], X[:0]])
    # an empty batch before real ones is skipped
    m = fit(small(random_state=0), [X[:0], X])
    ref = fit(small(random_state=0), X)
    np.testing.assert_allclose(m.kernels_, ref.kernels_, rtol=1e-12, atol=1e-12)


def test_a_numpy_bool_from_the_callback_stops_the_fit():
    m = fit(small(max_iter=10, tol=0.0, callback=lambda est: np.True_))
    assert m.n_iter_ == 1


@pytest.mark.parametrize("name", ["kernel_size", "pooling"])
def test_negative_sizes_are_value_errors(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got -2"):
        fit(small(**{name: -2}))


@pytest.mark.parametrize("dtype", [np.complex128, np.bool_])
def test_complex_or_bool_init_is_refused(dtype):
    init = (RNG.standard_normal((3, 1, 3, 3)) > 0).astype(dtype)
    with pytest.raises(TypeError, match="init has"):
        fit(small(init=init))


# -- tampered files are refused with a ValueError naming the file -------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.npz"
    fit(small()).save(path)
    return path


def _with_header(path, text):
    with np.load(path) as f:
        arrays = dict(f)
    arrays["header"] = np.frombuffer(text.encode(), np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "text", ["[" * 100000 + "]" * 100000, '{"format": ' + "9" * 5000 + "}"]
)
def test_pathological_json_headers_are_value_errors(saved, text):
    with pytest.raises(ValueError, match=f"{saved}.*header is not JSON"):
        ConvolutionalMixture.load(_with_header(saved, text))


@pytest.mark.parametrize("offset, value", [(10, 99), (6, 97)])
def test_a_damaged_central_directory_is_a_value_error(saved, offset, value):
    """Offset 10: the compression method (refused as a compressed member);
    6: the zip version needed (zipfile's NotImplementedError)."""
    raw = bytearray(saved.read_bytes())
    raw[raw.find(b"PK\x01\x02") + offset] = value
    saved.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=str(saved)):
        ConvolutionalMixture.load(saved)


@pytest.fixture
def saved_network(tmp_path):
    layers = [
        small(latent="patch", features="triangle"),
        small(kernel_size=2, latent="patch", features="triangle"),
    ]
    path = tmp_path / "net.npz"
    fit(ConvolutionalMixtureNetwork(layers)).save(path)
    with np.load(path) as f:
        return path, dict(f)


def test_a_compressed_network_member_is_refused_before_decompression(saved_network):
    """50 MiB of zeros deflated to ~50 kB: refused from the zip directory."""
    path, arrays = saved_network
    bomb = io.BytesIO()
    np.save(bomb, np.zeros(50 * 2**20, np.uint8))
    with zipfile.ZipFile(path, "w") as zf:  # stored, as np.savez writes
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a)
            if name == "layer0":  # but this member deflated
                zf.writestr("layer0.npy", bomb.getvalue(), zipfile.ZIP_DEFLATED)
            else:
                zf.writestr(name + ".npy", buf.getvalue())
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="'layer0.npy' is compressed"):
        ConvolutionalMixtureNetwork.load(path)


def test_a_network_member_declaring_a_huge_shape_is_refused(saved_network):
    path, arrays = saved_network
    buf = io.BytesIO()
    np.save(buf, arrays["layer0"])
    raw = buf.getvalue().replace(
        f"({arrays['layer0'].size},)".encode(), b"(4398046511104,)", 1
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in arrays.items():
            one = io.BytesIO()
            np.save(one, a)
            zf.writestr(name + ".npy", raw if name == "layer0" else one.getvalue())
    with pytest.raises(ValueError, match="layer0 array has shape \\(4398046511104,\\)"):
        ConvolutionalMixtureNetwork.load(path)


def test_a_network_layer_whose_pooling_does_not_fit_is_refused_before_any_work(
    monkeypatch,
):
    """Layer 1 sees 3x3 maps (8x8 images, 3x3 kernels, pooled 2x2): 4x4 cells
    cannot fit; refused naming the layer, before layer 0 is fitted."""
    layers = [
        small(latent="patch", features="triangle"),
        small(kernel_size=1, latent="patch", features="triangle", pooling=4),
    ]
    fitted_layers = []
    original = ConvolutionalMixture.fit

    def spy(self, *args, **kwargs):
        fitted_layers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConvolutionalMixture, "fit", spy)
    net = ConvolutionalMixtureNetwork(layers, pool_size=2)
    with pytest.raises(ValueError, match=r"layers\[1\]: pooling grid \(4, 4\)"):
        net.fit(X)
    assert fitted_layers == []


# -- clear errors where a NumPy error or a MemoryError came out ---------------------


def test_statistics_add_up_with_sum_and_refuse_other_kernels():
    a = calm_np.sufficient_statistics(X[:5], K)
    b = calm_np.sufficient_statistics(X[5:], K)
    total = sum([a, b])
    whole = calm_np.sufficient_statistics(X, K)
    np.testing.assert_allclose(total.counts, whole.counts, rtol=1e-12)
    np.testing.assert_allclose(total.sums, whole.sums, rtol=1e-12, atol=1e-12)
    other = calm_np.sufficient_statistics(X, K[:2])
    with pytest.raises(ValueError, match="statistics of kernels"):
        a + other


def test_statistics_of_two_libraries_do_not_add():
    torch = pytest.importorskip("torch")
    a = calm_np.sufficient_statistics(X, K)
    b = calm_np.sufficient_statistics(torch.asarray(X), torch.asarray(K))
    with pytest.raises(TypeError, match="numpy.*torch|torch.*numpy"):
        a + b


def test_absurd_padding_is_refused_before_allocating():
    with pytest.raises(ValueError, match="GiB of maps per image"):
        calm_np.log_joint(X, K, padding=10**6)


def test_a_dead_kernel_under_learned_weights_raises_no_warning():
    """Weight exactly 0: log 0 = -inf, without NumPy's divide-by-zero warning."""
    init = np.concatenate([K, 50 + K[:1]])  # kernel 3 far from every patch
    m = small(n_kernels=4, init=init, learn_weights=True, max_iter=3, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's divide by zero
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        warnings.simplefilter("ignore", DeadKernelWarning)  # calm_np's own
        m.fit(X)
        assert float(m.weights_[3]) == 0.0
        m.set_params(warm_start=True).fit(X)
        m.partial_fit(X)


def test_a_negative_format_version_is_refused(saved):
    with np.load(saved) as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays["header"]).decode())
    header["format_version"] = -5
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(saved, **arrays)
    with pytest.raises(ValueError, match="no valid format version"):
        ConvolutionalMixture.load(saved)


@pytest.mark.parametrize(
    "data, dtype_name",
    [(X * 1e-160, "float64"), ((X * 1e-20).astype(np.float32), "float32")],
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


@pytest.mark.parametrize("order", ["torch_first", "numpy_first", "empty_numpy_first"])
def test_a_list_mixing_array_libraries_is_refused_clearly(order):
    torch = pytest.importorskip("torch")
    batches = {
        "torch_first": ([torch.asarray(X[:5]), X[5:]], "numpy batch among torch"),
        "numpy_first": ([X[:5], torch.asarray(X[5:])], "torch batch among numpy"),
        "empty_numpy_first": ([X[:0], torch.asarray(X)], "numpy batch among torch"),
    }
    data, message = batches[order]
    with pytest.raises(TypeError, match=f"one array library; got a {message}"):
        fit(small(), data)


def test_a_save_over_a_symlink_replaces_its_target_and_keeps_its_mode(tmp_path):
    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    fit(small()).save(target)
    os.chmod(target, 0o600)
    link.symlink_to(target)
    m = fit(small(random_state=1))
    m.save(link)
    assert link.is_symlink()
    assert os.stat(target).st_mode & 0o777 == 0o600
    np.testing.assert_array_equal(
        ConvolutionalMixture.load(target).kernels_, m.kernels_
    )


# -- saving where a rename would change what the path is ----------------------------


def test_the_overflow_bound_lets_kernels_as_large_as_the_images_through():
    """Kernels equal to float32 images near the dtype's limit: finite results
    (a review found the first bound three times too strict here)."""
    peak = 0.9 * np.sqrt(np.finfo(np.float32).max / 64)
    Xb = (RNG.uniform(0.8, 1, (4, 1, 8, 8)) * peak).astype(np.float32)
    A = calm_np.log_joint(Xb, Xb[:2])
    assert np.isfinite(A).all()
    assert np.isfinite(calm_np.posterior(Xb, Xb[:2])).all()


def test_a_save_into_a_pipe_writes_into_it(tmp_path):
    """A FIFO stays a FIFO (renaming over it would replace it with a file)."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    fit(small()).save(fifo)
    reader.join(timeout=30)
    assert received and received[0][:4] == b"PK\x03\x04"
    assert os.path.exists(fifo) and not os.path.isfile(fifo)


def test_a_save_over_a_hard_linked_file_updates_every_link(tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    fit(small()).save(first)
    os.link(first, second)
    m = fit(small(random_state=1))
    m.save(first)
    assert os.path.samefile(first, second)
    np.testing.assert_array_equal(
        ConvolutionalMixture.load(second).kernels_, m.kernels_
    )


def test_a_long_file_name_saves(tmp_path):
    path = tmp_path / ("m" * 240 + ".npz")
    m = fit(small())
    m.save(path)
    np.testing.assert_array_equal(ConvolutionalMixture.load(path).kernels_, m.kernels_)


def test_a_save_into_a_missing_folder_names_the_target(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        fit(small()).save(tmp_path / "nope" / "m.npz")
    assert info.value.filename == os.path.realpath(tmp_path / "nope" / "m.npz")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes regardless of permissions")
def test_a_read_only_file_is_not_overwritten(tmp_path):
    path = tmp_path / "m.npz"
    fit(small()).save(path)
    before = path.read_bytes()
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError):
        fit(small(random_state=1)).save(path)
    assert path.read_bytes() == before


def test_a_lazy_array_like_of_the_wrong_rank_is_reported_with_its_own_shape():
    class Lazy:  # sliceable, with a shape, no array namespace
        shape = (60000, 28)

        def __getitem__(self, key):
            return np.zeros((60000, 28), np.float32)[key]

    with pytest.raises(ValueError, match=r"of shape \(60000, 28\)"):
        fit(small(), Lazy())
