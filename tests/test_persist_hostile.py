"""Hostile model and network files, and saves (``_persist``, ``_write``).

Tampered, truncated, compressed or oversized files are a ``ValueError``
naming the file, refused before anything large is read; saves are atomic
(an interrupted or failed one leaves the previous file), keep permissions,
links and devices as ``open`` would, name their target, and need no
temporary folder for a network.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
import zipfile

import numpy as np
import pytest
from _hostile import fitted, fitted_network

import calm_np
from calm_np import ConvolutionalMixture, ConvolutionalMixtureNetwork

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 1, 8, 8))


# -- model files ------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    fitted().save(path)
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays.pop("header")).decode())
    return header, arrays


def _write(path, header, arrays):
    blob = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, header=blob, **arrays)
    return path


def _edited(saved, tmp_path, header=None, **arrays):
    h, a = json.loads(json.dumps(saved[0])), dict(saved[1])
    if header is not None:
        header(h)
    a.update(arrays)
    a = {k: v for k, v in a.items() if v is not None}
    return _write(tmp_path / "bad.npz", h, a)


def _set(key, value):
    def edit(h):
        h[key] = value

    return edit


def _param(key, value):
    def edit(h):
        h["params"][key] = value

    return edit


def _drop(key):
    def edit(h):
        del h[key]

    return edit


FILE_CASES = [
    (dict(header=_set("format_version", 2)), "format version 2, newer than"),
    (dict(header=_set("format_version", "1")), "no valid format version"),
    (dict(header=_set("format", "other")), "is not a calm_np model file"),
    (dict(header=_param("bogus", 1)), r"unknown parameters \['bogus'\]"),
    (dict(header=_param("n_kernels", "three")), "bad parameter: n_kernels must"),
    (dict(header=_param("learn_weights", "no")), "bad parameter: learn_weights"),
    (dict(header=_param("learn_variance", 1)), "bad parameter: learn_variance"),
    (dict(header=_set("variance", 0.0)), "corrupt: its variance must be a finite"),
    (dict(header=_set("variance", -2.0)), "corrupt: its variance must be a finite"),
    (dict(header=_set("variance", math.inf)), "corrupt: its variance must be a fin"),
    (dict(header=_set("variance", math.nan)), "corrupt: its variance must be a fin"),
    (dict(header=_set("variance", "1.0")), "corrupt: its variance must be a real"),
    (dict(header=_set("variance", True)), "corrupt: its variance must be a real"),
    (dict(header=_set("variance", None)), "corrupt: its variance must be a real"),
    (dict(header=_param("tol", -1)), "bad parameter: tol must be"),
    (dict(header=_set("kernels_shape", [3, 1, 3])), "header's shapes do not agree"),
    (dict(header=_set("kernels_shape", [3, 1, 3, -3])), "shapes do not agree"),
    (dict(header=_set("kernels_shape", [3, 2, 3, 3])), "shapes do not agree"),
    (dict(header=_set("kernel_size", [5, 5])), "shapes do not agree"),
    (dict(header=_set("padding", [-1, 0])), "shapes do not agree"),
    (dict(header=_set("dtype", "complex128")), "shapes do not agree"),
    (dict(header=_set("dtype", "object")), "shapes do not agree"),
    (dict(header=_set("lower_bound", "NaN")), "header key 'lower_bound'"),
    (dict(header=_set("n_iter", -1)), "shapes do not agree"),
    (dict(header=_set("n_iter", True)), "header key 'n_iter'"),
    (dict(header=_set("converged", "yes")), "header key 'converged'"),
    (dict(header=_set("params", [])), "header key 'params'"),
    (dict(header=_set("kernels_shape", [2**27, 1, 3, 3])), "declares kernels of"),
    (dict(weights=np.array([0.5, 0.5])), "weights array has shape"),
    (dict(weights=np.array([1.5, -0.25, -0.25])), "weights must be non-negative"),
    (dict(weights=np.array([0.5, 0.5, 0.5])), "sum to 1"),
    (dict(weights=np.array([1, 0, 0])), "weights array has shape .* dtype int64"),
    (dict(kernels=np.full((3, 1, 3, 3), np.nan)), "kernels contain NaN"),
    (dict(kernels=np.zeros((3, 1, 3, 3), complex)), "dtype complex128"),
    (dict(kernels=np.zeros((3, 1, 3, 3), np.float32)), "dtype float32"),
    (dict(kernels=np.zeros((3, 1, 5, 5))), r"kernels array has shape \(3, 1, 5, 5\)"),
    (dict(kernels=np.array([None, 1], dtype=object)), "object arrays"),
    (dict(kernels=None), "missing arrays"),
    (dict(weights=None), "missing arrays"),
    (dict(lower_bounds=np.array([np.nan, 1.0])), "lower_bounds contain NaN"),
    (dict(lower_bounds=np.zeros(5)), "lower_bounds array has shape"),
    (dict(extra=np.zeros(3)), "unexpected member 'extra.npy'"),
]


FILE_CASES += [
    (dict(header=_drop(key)), f"header key '{key}' is missing")
    for key in (
        "params",
        "dtype",
        "kernels_shape",
        "n_channels_in",
        "kernel_size",
        "padding",
        "n_iter",
        "converged",
        "lower_bound",
    )
]


@pytest.mark.parametrize("edit, match", FILE_CASES)
def test_bad_model_file_is_named(saved, tmp_path, edit, match):
    path = _edited(saved, tmp_path, **edit)
    with pytest.raises(ValueError, match=match) as info:
        ConvolutionalMixture.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"[1, 2, 3]", "is not a calm_np model file"),
        (b'"a string"', "is not a calm_np model file"),
        (b"{not json", "header is not JSON"),
        (b"\xff\xfe", "header is not JSON"),
        (b"null", "is not a calm_np model file"),
    ],
)
def test_header_that_is_not_a_dict(saved, tmp_path, blob, match):
    path = tmp_path / "bad.npz"
    np.savez(path, header=np.frombuffer(blob, np.uint8), **saved[1])
    with pytest.raises(ValueError, match=match):
        ConvolutionalMixture.load(path)


def test_header_as_a_2d_array(saved, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, header=np.zeros((2, 2), np.uint8), **saved[1])
    with pytest.raises(ValueError, match="header array has shape"):
        ConvolutionalMixture.load(path)


def test_zip_bomb_is_refused_before_decompression(saved, tmp_path):
    """A kernels member of 64 MB zeros (deflated to ~64 kB) behind a 3x1x3x3 header."""
    path = _edited(saved, tmp_path)
    bomb = io.BytesIO()
    np.save(bomb, np.zeros(8 * 2**20))
    with (
        warnings.catch_warnings(),
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf,
    ):
        warnings.simplefilter("ignore")  # the duplicate name is the point
        zf.writestr("kernels.npy", bomb.getvalue())  # a second, huge member
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="'kernels.npy' is compressed"):
        ConvolutionalMixture.load(path)


def test_oversized_stored_member_is_refused_before_reading(saved, tmp_path):
    """Stored (as np.savez writes), a member larger than its header declares."""
    path = _write(
        tmp_path / "big.npz", saved[0], dict(saved[1], kernels=np.zeros(2**20))
    )
    with pytest.raises(ValueError, match="kernels array takes .* more than the"):
        ConvolutionalMixture.load(path)


def test_header_bomb_is_refused(saved, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, header=np.zeros(4 * 2**20, np.uint8), **saved[1])
    with pytest.raises(ValueError, match="its header takes"):
        ConvolutionalMixture.load(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "truncated or not an .npz file"),
        (b"PK\x03\x04garbage", "truncated or not an .npz file"),
        (b"\x93NUMPY", "truncated or not an .npz file"),
    ],
)
def test_not_a_zip(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        ConvolutionalMixture.load(path)


def test_good_file_still_loads(saved, tmp_path):
    path = _edited(saved, tmp_path)
    m = ConvolutionalMixture.load(path)
    assert m.kernels_.shape == (3, 1, 3, 3)
    assert np.all(np.isfinite(m.transform(X[:2])))


# ten images and three kernels, for the cases below
X10 = RNG.standard_normal((10, 1, 8, 8))


def fit(model, data=X10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(data)


def small(**kw):
    return ConvolutionalMixture(
        **{"n_kernels": 3, "kernel_size": 3, "max_iter": 2, **kw}
    )


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


@pytest.mark.parametrize(
    "params",
    [dict(kernel_size=np.array([3, 3])), dict(pooling=np.array([1, 2]))],
)
def test_numpy_valued_parameters_save_and_reload(params, tmp_path):
    m = fit(small(**params))
    m.save(tmp_path / "m.npz")
    back = ConvolutionalMixture.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.kernels_, m.kernels_)
    np.testing.assert_array_equal(back.transform(X10), m.transform(X10))


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
    np.testing.assert_array_equal(back.transform(X10), net.transform(X10))


def test_longdouble_images_fit_in_float64_and_reload(tmp_path):
    m = fit(small(max_iter=1), X10.astype(np.longdouble))
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


# -- tampered files are refused with a ValueError naming the file -------------------


@pytest.fixture
def saved_path(tmp_path):
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
def test_pathological_json_headers_are_value_errors(saved_path, text):
    with pytest.raises(ValueError, match=f"{saved_path}.*header is not JSON"):
        ConvolutionalMixture.load(_with_header(saved_path, text))


@pytest.mark.parametrize("offset, value", [(10, 99), (6, 97)])
def test_a_damaged_central_directory_is_a_value_error(saved_path, offset, value):
    """Offset 10: the compression method (refused as a compressed member);
    6: the zip version needed (zipfile's NotImplementedError)."""
    raw = bytearray(saved_path.read_bytes())
    raw[raw.find(b"PK\x01\x02") + offset] = value
    saved_path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=str(saved_path)):
        ConvolutionalMixture.load(saved_path)


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
        net.fit(X10)
    assert fitted_layers == []


def test_a_negative_format_version_is_refused(saved_path):
    with np.load(saved_path) as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays["header"]).decode())
    header["format_version"] = -5
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(saved_path, **arrays)
    with pytest.raises(ValueError, match="no valid format version"):
        ConvolutionalMixture.load(saved_path)


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


# -- network files: headers checked, no temporary folder --------------------------
@pytest.fixture(scope="module")
def network():
    return fitted_network()


def _rewrite_header(path, out, **changes):
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = np.load(io.BytesIO(members["header.npy"]))
    data = json.loads(bytes(header).decode())
    data.update(changes)
    blob = np.frombuffer(json.dumps(data).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, blob)
    members["header.npy"] = buffer.getvalue()
    with zipfile.ZipFile(out, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(format_version=-1), "no valid format version"),
        (dict(format_version=0), "no valid format version"),
        (dict(format_version=99), "upgrade calm_np"),
        (dict(n_features=12345), "header says 12345 features"),
        (dict(n_features=0), "header says 0 features"),
    ],
)
def test_hostile_network_header(network, tmp_path, changes, match):
    net, _ = network
    net.save(tmp_path / "net.npz")
    _rewrite_header(tmp_path / "net.npz", tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=match):
        calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "bad.npz")


def _no_temporary_folder(monkeypatch, tmp_path):
    """Every way of making a temporary file or folder fails, as with a full
    or read-only /tmp and TMPDIR pointing nowhere."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "no writable temporary folder")

    for name in ("mkdtemp", "mkstemp", "TemporaryDirectory", "NamedTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "nowhere"))


def test_hostile_network_loads_without_a_temporary_folder(
    network, tmp_path, monkeypatch
):
    net, X = network
    net.save(tmp_path / "net.npz")
    _no_temporary_folder(monkeypatch, tmp_path)
    loaded = calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.transform(X), net.transform(X))


def test_hostile_network_layer_errors_name_the_member_not_a_temporary_file(
    network, tmp_path, monkeypatch
):
    net, _ = network
    net.save(tmp_path / "net.npz")
    with zipfile.ZipFile(tmp_path / "net.npz") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    layer = np.load(io.BytesIO(members["layer1.npy"]))
    buffer = io.BytesIO()
    np.save(buffer, layer[: len(layer) // 2])  # layer 1's file cut in half
    members["layer1.npy"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    _no_temporary_folder(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="layer 1 is not valid: layer1.npy is") as info:
        calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "bad.npz")
    assert str(tmp_path / "bad.npz") in str(info.value)
    assert "tmp" not in str(info.value).replace(str(tmp_path), "")


def test_network_saves_without_a_temporary_folder_beside_its_target(
    network, tmp_path, monkeypatch
):
    # the layers' files are made in memory; only the target's own temporary
    # name (beside it, for an atomic rename) is written
    import tempfile

    net, X = network
    real = tempfile.mkstemp
    made = []

    def spy(*args, dir=None, **kwargs):
        made.append(dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", None)
    net.save(tmp_path / "net.npz")
    assert all(d is not None and str(d).startswith(str(tmp_path)) for d in made)
    loaded = calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.transform(X), net.transform(X))


# -- saves name their target --------------------------------------------------------
def test_save_to_a_full_device_names_it(network):
    net, _ = network
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    for model in (net, net.layers_[0]):
        with pytest.raises(OSError, match="/dev/full"):
            model.save("/dev/full")
