"""Persistence: a fitted model as an ``.npz`` file, and the checks on reading one.

The file holds plain arrays (kernels, weights, objective history) and a JSON
header (format version, hyper-parameters, dtype, shapes): no pickles, so a
file from an untrusted source cannot run code, and a model saved from CuPy
or PyTorch loads on a machine with only NumPy.  ``ConvolutionalMixture.save``
and ``.load`` are thin wrappers over :func:`save` and :func:`load`.
"""

from __future__ import annotations

import json
import numbers

import numpy as np

from ._xp import to_numpy

FORMAT_VERSION = 1


def save(model, path):
    """Write the fitted model to ``path`` (``.npz``, no pickles).

    The file holds the kernels, weights and objective history as plain
    arrays and a JSON header (format version, hyper-parameters, dtype,
    shapes).  :meth:`load` gives back the same arrays bit for bit.
    """
    params = {}
    for name, value in model.get_params().items():
        if name == "callback":
            continue
        if name == "init" and not isinstance(value, str):
            value = "array"
        if name == "random_state" and not (
            value is None or isinstance(value, numbers.Integral)
        ):
            value = None
        if isinstance(value, tuple):
            value = list(value)
        params[name] = value
    kernels = to_numpy(model.kernels_)
    header = dict(
        format="calm_np.ConvolutionalMixture",
        format_version=FORMAT_VERSION,
        params=params,
        dtype=str(kernels.dtype),
        kernels_shape=list(kernels.shape),
        n_channels_in=model.n_channels_in_,
        kernel_size=list(model.kernel_size_),
        padding=list(model.padding_),
        n_iter=model.n_iter_,
        converged=bool(model.converged_),
        lower_bound=model.lower_bound_,
    )
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(
            fh,
            header=blob,
            kernels=kernels,
            weights=to_numpy(model.weights_),
            lower_bounds=np.asarray(model.lower_bounds_, dtype=np.float64),
        )


def load(cls, path, *, xp=None, device=None):
    """Read a model written by :func:`save` as an instance of ``cls``.

    Arrays come back as NumPy arrays (a model saved from CuPy loads on a
    machine without a GPU) unless ``xp`` (a namespace) and ``device``
    say where to put them.
    """
    header, kernels, weights, bounds = _read(path)
    _check_header(header, kernels, path)
    params = dict(header["params"])
    if params.get("init") == "array":
        params["init"] = "kmeans++"
    for name in ("kernel_size", "padding", "pooling"):
        if isinstance(params.get(name), list):
            params[name] = tuple(params[name])
    model = cls(**params)
    if xp is not None:
        kernels = xp.asarray(kernels, device=device)
        weights = xp.asarray(weights, device=device)
    model.kernels_ = kernels
    model.weights_ = weights
    model.lower_bounds_ = [] if bounds is None else bounds.tolist()
    model.lower_bound_ = header["lower_bound"]
    model.n_iter_ = header["n_iter"]
    model.converged_ = header["converged"]
    model.n_channels_in_ = header["n_channels_in"]
    model.kernel_size_ = tuple(header["kernel_size"])
    model.padding_ = tuple(header["padding"])
    return model


def _read(path):
    """``(header, kernels, weights, lower_bounds or None)``; clear errors."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                raise zipfile.BadZipFile("no zip signature")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as data:
                names = set(data.files)
                if not {"header", "kernels", "weights"} <= names:
                    raise ValueError(
                        f"{path} is not a calm_np model file (missing "
                        "arrays); write models with ConvolutionalMixture.save"
                    )
                header = json.loads(bytes(data["header"]).decode("utf-8"))
                kernels = data["kernels"]
                weights = data["weights"]
                bounds = data["lower_bounds"] if "lower_bounds" in names else None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"{path} is truncated or not an .npz file ({exc}); save the model again"
        ) from exc
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(
                f"{path} holds object arrays, which calm_np never writes; "
                "refusing to unpickle it"
            ) from exc
        if "calm_np model" in str(exc):
            raise
        raise ValueError(f"{path} is not a valid calm_np model: {exc}") from exc
    return header, kernels, weights, bounds


def _check_header(header, kernels, path):
    if header.get("format") != "calm_np.ConvolutionalMixture":
        raise ValueError(f"{path} is not a calm_np model file")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this calm_np "
            f"reads ({FORMAT_VERSION}); upgrade calm_np"
        )
    if (
        list(kernels.shape) != header["kernels_shape"]
        or str(kernels.dtype) != header["dtype"]
    ):
        raise ValueError(f"{path} is corrupt: kernels do not match the header")


# -- networks: one .npz holding each layer's own model file ---------------------
NETWORK_FORMAT = "calm_np.ConvolutionalMixtureNetwork"
NETWORK_PARAMS = ("activation", "batch_size", "normalize", "pool_size", "readout")
MAX_NETWORK_MEMBER_BYTES = 2**31


def save_network(network, path):
    """Write a fitted network: a JSON header, per-channel statistics, and each
    layer as the bytes of the file :func:`save` writes for it."""
    import pathlib
    import tempfile

    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, layer in enumerate(network.layers_):
            file = pathlib.Path(tmp) / f"layer{i}.npz"
            save(layer, file)
            arrays[f"layer{i}"] = np.frombuffer(file.read_bytes(), dtype=np.uint8)
    for i, (mean, scale) in enumerate(network.norms_):
        arrays[f"norm_mean{i}"] = np.asarray(mean, dtype=np.float64)
        arrays[f"norm_scale{i}"] = np.asarray(scale, dtype=np.float64)
    header = dict(
        format=NETWORK_FORMAT,
        format_version=FORMAT_VERSION,
        params={name: getattr(network, name) for name in NETWORK_PARAMS},
        n_layers=len(network.layers_),
        n_features=int(network.n_features_),
    )
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, header=blob, **arrays)


def load_network(cls, layer_cls, path, *, xp=None, device=None):
    """Read a network written by :func:`save_network`; every layer is read by
    :func:`load` (the estimator's checks), then the stack is checked whole."""
    import pathlib
    import tempfile

    header, arrays = _read_network(path)
    layers = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(header["n_layers"]):
            file = pathlib.Path(tmp) / f"layer{i}.npz"
            file.write_bytes(arrays[f"layer{i}"].tobytes())
            try:
                layers.append(load(layer_cls, file, xp=xp, device=device))
            except ValueError as exc:
                raise ValueError(f"{path}: layer {i} is not valid: {exc}") from exc
    norms = [
        (arrays[f"norm_mean{i}"], arrays[f"norm_scale{i}"])
        for i in range(header["n_layers"] - 1)
    ]
    for i, (mean, scale) in enumerate(norms):
        k, c = layers[i].kernels_.shape[0], layers[i + 1].n_channels_in_
        if not (mean.shape == scale.shape and mean.shape[0] in (1, k) and c == k):
            raise ValueError(
                f"{path} is corrupt: layer {i} has {k} kernels, layer {i + 1} "
                f"{c} channels and statistics of {mean.shape[0]} channels"
            )
        if not (
            np.all(np.isfinite(mean))
            and np.all(scale > 0)
            and np.all(np.isfinite(scale))
        ):
            raise ValueError(f"{path} is corrupt: layer {i}'s statistics")
    unfitted = [layer_cls(**layer.get_params()) for layer in layers]
    network = cls(unfitted, **header["params"])
    try:
        network._check_params()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a bad parameter: {exc}") from exc
    network.layers_, network.norms_ = layers, norms
    network.n_features_ = header["n_features"]
    return network


def _read_network(path):
    """``(header, arrays)`` of a network file; only known members, bounded."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            raise zipfile.BadZipFile("no zip directory")
        with zipfile.ZipFile(path) as zf:
            sizes = {i.filename: i.file_size for i in zf.infolist()}
        if "header.npy" not in sizes or max(sizes.values()) > MAX_NETWORK_MEMBER_BYTES:
            raise ValueError(f"{path} is not a calm_np network file")
        with np.load(path, allow_pickle=False) as data:
            header = _network_header(data["header"], path)
            n = header["n_layers"]
            wanted = {f"layer{i}": "uint8" for i in range(n)}
            for i in range(n - 1):
                wanted[f"norm_mean{i}"] = wanted[f"norm_scale{i}"] = "float64"
            if set(sizes) != {f"{name}.npy" for name in [*wanted, "header"]}:
                raise ValueError(
                    f"{path} is corrupt: its arrays {sorted(sizes)} are not "
                    f"those of a {n}-layer network"
                )
            arrays = {name: data[name] for name in wanted}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{path} is truncated or not an .npz file ({exc})") from exc
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path} is not a valid calm_np network: {exc}") from exc
    for name, dtype in wanted.items():
        if arrays[name].ndim != 1 or str(arrays[name].dtype) != dtype:
            raise ValueError(f"{path} is corrupt: its {name} array is not 1-D {dtype}")
    return header, arrays


def _network_header(blob, path):
    try:
        header = json.loads(bytes(np.asarray(blob, dtype=np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path} is corrupt: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != NETWORK_FORMAT:
        raise ValueError(f"{path} is not a calm_np network file")
    version, n = header.get("format_version"), header.get("n_layers")
    if type(version) is not int or version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version!r}; upgrade calm_np")
    params = header.get("params")
    if (
        type(n) is not int
        or not 1 <= n <= 1000
        or type(header.get("n_features")) is not int
        or not isinstance(params, dict)
        or set(params) != set(NETWORK_PARAMS)
    ):
        raise ValueError(f"{path} is corrupt: bad network header {header!r:.200}")
    return header
