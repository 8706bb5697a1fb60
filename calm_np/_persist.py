"""Persistence: a fitted model as an ``.npz`` file, and the checks on reading one.

The file holds plain arrays (kernels, weights, objective history) and a JSON
header (format version, hyper-parameters, dtype, shapes, σ²): no pickles, so a
file from an untrusted source cannot run code, and a model saved from CuPy
or PyTorch loads on a machine with only NumPy.  ``ConvolutionalMixture.save``
and ``.load`` are thin wrappers over :func:`save` and :func:`load`.

Writing goes to a temporary file in the target's folder, renamed over the
target only when complete (:func:`~calm_np._write.write_replacing`): an
interrupted or failed save leaves the previous file as it was.  A model is
checked before anything is written (a dtype :func:`load` reads, parameters
JSON can hold).

Reading trusts nothing, in this order, and every failure is a ``ValueError``
naming the file: the zip's directory (known members only, stored
uncompressed as ``np.savez`` writes them, sizes read from the central
directory); the JSON header (a dict with every key, known
parameters that pass ``_checks.check_params``, consistent shapes); each
member's declared size against what the header's shapes imply (so a "zip
bomb" is refused before anything is decompressed); each array's own ``.npy``
header (shape, real floating dtype, no objects); then the values (finite,
weights non-negative, summing to 1, one per kernel; σ² finite and > 0, 1
in files written before it was learned).
"""

from __future__ import annotations

import io
import json
import math
import numbers
import zipfile
import zlib

import numpy as np

from . import _checks
from ._whiten import Whitening, on_namespace
from ._write import write_replacing
from ._xp import to_numpy

FORMAT_VERSION = 1
FORMAT = "calm_np.ConvolutionalMixture"
# The largest model file calm_np reads: kernels of up to 2**30 bytes, a JSON
# header of up to 1 MiB, and room for each member's .npy header.
MAX_ARRAY_BYTES = 2**30
MAX_HEADER_BYTES = 2**20
NPY_HEADER_BYTES = 4096
FLOAT_DTYPES = ("float16", "float32", "float64")
# The arrays of a fitted whitening (``whiten=True``), with ``whiten_eps`` in
# the header; files without them (older ones) load with whitening off.
WHITENING = ("whiten_mean", "whiten_matrix")
HEADER_KEYS = {
    "format": str,
    "format_version": int,
    "params": dict,
    "dtype": str,
    "kernels_shape": list,
    "n_channels_in": int,
    "kernel_size": list,
    "padding": list,
    "n_iter": int,
    "converged": bool,
    "lower_bound": (int, float),
}


def _plain(value):
    """A JSON-able Python value (NumPy scalars, arrays and tuples included)."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# reading can also fail with a damaged zip (zlib.error; NotImplementedError:
# an unknown compression method or zip version) or a deeply nested header
_UNREADABLE = (zipfile.BadZipFile, EOFError, OSError, zlib.error)
_UNREADABLE += (NotImplementedError, RecursionError)


def save(model, path):
    """Write the fitted model to ``path`` (``.npz``, no pickles).

    The file holds the kernels, weights and objective history as plain
    arrays and a JSON header (format version, hyper-parameters, dtype,
    shapes).  :meth:`load` gives back the same arrays bit for bit.
    """
    arrays = _model_arrays(model)
    write_replacing(path, lambda fh: np.savez(fh, **arrays))


def model_bytes(model):
    """The bytes :func:`save` would write for ``model`` (made in memory)."""
    buffer = io.BytesIO()
    np.savez(buffer, **_model_arrays(model))
    return buffer.getvalue()


def _model_arrays(model):
    """The arrays of a model file, its JSON header first; checked first."""
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
        params[name] = _plain(value)
    kernels = to_numpy(model.kernels_)
    if str(kernels.dtype) not in FLOAT_DTYPES:  # nothing written: load reads these
        raise ValueError(
            f"cannot save kernels of dtype {kernels.dtype}; a model file holds "
            f"{', '.join(FLOAT_DTYPES)} (fit on float64 data)"
        )
    header = dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        params=params,
        dtype=str(kernels.dtype),
        kernels_shape=list(kernels.shape),
        n_channels_in=int(model.n_channels_in_),
        kernel_size=_plain(list(model.kernel_size_)),
        padding=_plain(list(model.padding_)),
        n_iter=int(model.n_iter_),
        converged=bool(model.converged_),
        lower_bound=float(model.lower_bound_),
        variance=float(getattr(model, "variance_", 1.0)),
    )
    whitening = {}
    if getattr(model, "whitening_", None) is not None:
        mean, matrix, header["whiten_eps"] = model.whitening_
        whitening = dict(whiten_mean=to_numpy(mean), whiten_matrix=to_numpy(matrix))
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    return dict(
        header=blob,
        kernels=kernels,
        weights=to_numpy(model.weights_),
        lower_bounds=np.asarray(
            [float(b) for b in model.lower_bounds_], dtype=np.float64
        ),
        **whitening,
    )


def load(cls, path, *, xp=None, device=None, data=None):
    """Read a model written by :func:`save` as an instance of ``cls``.

    Arrays come back as NumPy arrays (a model saved from CuPy loads on a
    machine without a GPU) unless ``xp`` (a namespace) and ``device``
    say where to put them.  Every defect is a ``ValueError`` naming ``path``.
    ``data``: the file's bytes, read from memory (``path`` then only names
    them; a network's layers are read so, with no temporary file).
    """
    source = path if data is None else data
    header, params, kernels, weights, bounds, whitening = _read(source, cls, path)
    model = cls(**params)
    if xp is not None:
        kernels = xp.asarray(kernels, device=device)
        weights = xp.asarray(weights, device=device)
        whitening = on_namespace(whitening, xp, kernels.dtype, device)
    model.whitening_ = whitening
    model.kernels_ = kernels
    model.weights_ = weights
    model.lower_bounds_ = [] if bounds is None else bounds.tolist()
    model.lower_bound_ = float(header["lower_bound"])
    model.n_iter_ = header["n_iter"]
    model.converged_ = header["converged"]
    model.n_channels_in_ = header["n_channels_in"]
    model.kernel_size_ = tuple(header["kernel_size"])
    model.padding_ = tuple(header["padding"])
    model.variance_ = _variance(header, path)
    return model


def _zip(source):
    """A ``zipfile.ZipFile`` over a file's path or its bytes, once its first
    bytes are a zip's signature."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
        first = source.read(4)
        source.seek(0)
    else:
        with open(source, "rb") as fh:
            first = fh.read(4)
    if first != b"PK\x03\x04":
        raise zipfile.BadZipFile("no zip signature")
    return zipfile.ZipFile(source)


def _read(source, cls, path):
    """``(header, params, kernels, weights, lower_bounds or None, whitening or
    None)`` of the file at ``source`` (a path, or its bytes), all checked;
    errors name ``path``."""
    try:
        with _zip(source) as zf:
            sizes = _members(zf, path)
            header = _header(_array(zf, "header", sizes, path, "uint8"), path)
            params = _params(header, cls, path)
            expected = _expected(header, params, path)
            extra = sorted(set(sizes) - set(expected) - {"header"})
            if extra:
                raise ValueError(
                    f"{path} is corrupt: it holds {extra} but its header says "
                    "whiten=False"
                )
            arrays = {}
            for name, (shape, dtype) in expected.items():
                if name not in sizes:
                    arrays[name] = None
                    continue
                limit = math.prod(shape) * np.dtype(dtype).itemsize
                if name == "lower_bounds":
                    limit = 8 * (header["n_iter"] + 1)
                if sizes[name] > limit + NPY_HEADER_BYTES:
                    raise ValueError(
                        f"{path} is corrupt: its {name} array takes "
                        f"{sizes[name]} bytes, more than the {limit} the header "
                        "declares; refusing to read it"
                    )
                arrays[name] = _array(zf, name, sizes, path, (shape, dtype))
    except _UNREADABLE as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(
            f"{path} is truncated or not an .npz file ({exc!r}); save the model again"
        ) from exc
    _check_values(arrays, header, path)
    whitening = None
    if params.get("whiten"):
        if arrays["whiten_mean"] is None or arrays["whiten_matrix"] is None:
            raise ValueError(f"{path} is corrupt: whiten=True but no whitening arrays")
        mean, matrix = arrays["whiten_mean"], arrays["whiten_matrix"]
        whitening = Whitening(mean, matrix, header["whiten_eps"])
    kernels, weights = arrays["kernels"], arrays["weights"]
    return header, params, kernels, weights, arrays["lower_bounds"], whitening


def _stored_sizes(zf, path):
    """Sizes of the members, by array name (central directory), after checking
    that each is stored uncompressed, as ``np.savez`` writes it: no member
    can then hold more bytes than the file, so no "zip bomb" gets read."""
    sizes = {}
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED or (
            info.compress_size != info.file_size
        ):
            raise ValueError(
                f"{path} is not a calm_np file: member {info.filename!r} is "
                "compressed, and calm_np writes its files uncompressed"
            )
        sizes[info.filename.removesuffix(".npy")] = info.file_size
    return sizes


def _members(zf, path):
    """Sizes of the members, by array name (central directory)."""
    sizes = _stored_sizes(zf, path)
    for name in sizes:
        if name not in ("header", "kernels", "weights", "lower_bounds", *WHITENING):
            raise ValueError(
                f"{path} is not a calm_np model file (unexpected member "
                f"{name + '.npy'!r}); write models with ConvolutionalMixture.save"
            )
    if not {"header", "kernels", "weights"} <= set(sizes):
        raise ValueError(
            f"{path} is not a calm_np model file (missing arrays); write models "
            "with ConvolutionalMixture.save"
        )
    if sizes["header"] > MAX_HEADER_BYTES:
        raise ValueError(
            f"{path} is not a calm_np model file: its header takes "
            f"{sizes['header']} bytes (at most {MAX_HEADER_BYTES})"
        )
    return sizes


def _array(zf, name, sizes, path, expected):
    """Member ``name`` as an array; its ``.npy`` header checked first against
    ``expected``: ``(shape, dtype)``, or a dtype name for a 1-D array filling
    the member (a JSON header's bytes, a network's layer files)."""
    with zf.open(name + ".npy") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(fh)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ValueError(f"{path} is corrupt: bad {name} array ({exc})") from exc
        if dtype.hasobject:
            raise ValueError(
                f"{path} holds object arrays, which calm_np never writes; "
                "refusing to unpickle it"
            )
        if isinstance(expected, str):  # a vector filling the member
            count = (sizes[name] - fh.tell()) // np.dtype(expected).itemsize
            expected = ((count,) if len(shape) == 1 else (), expected)
        want_shape, want_dtype = expected
        if tuple(shape) != tuple(want_shape) or str(dtype) != want_dtype:
            raise ValueError(
                f"{path} is corrupt: its {name} array has shape {tuple(shape)} and "
                f"dtype {dtype}, but the header declares {tuple(want_shape)} and "
                f"{want_dtype}"
            )
        data = fh.read(dtype.itemsize * math.prod(shape))
    array = np.frombuffer(data, dtype=dtype)
    if array.size != math.prod(shape):
        raise ValueError(f"{path} is truncated: its {name} array is incomplete")
    order = "F" if fortran else "C"
    return array.reshape(shape, order=order).copy()


def _header(blob, path):
    try:
        header = json.loads(bytes(blob).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: not JSON, or an integer longer than Python reads
        raise ValueError(
            f"{path} is corrupt: its header is not JSON ({exc!r:.200})"
        ) from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a calm_np model file")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path} has no valid format version ({version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this calm_np "
            f"reads ({FORMAT_VERSION}); upgrade calm_np"
        )
    for key, kind in HEADER_KEYS.items():
        value = header.get(key)
        if (
            key not in header
            or not isinstance(value, kind)
            or (kind is not bool and isinstance(value, bool))
        ):
            raise ValueError(
                f"{path} is corrupt: header key {key!r} is missing or not of type "
                f"{getattr(kind, '__name__', 'number')} (got {value!r})"
            )
    shape = header["kernels_shape"]
    if not (
        len(shape) == 4
        and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        )
        and header["dtype"] in FLOAT_DTYPES
        and header["n_channels_in"] == shape[1]
        and header["kernel_size"] == shape[2:]
        and _pair_ok(header["padding"])
        and header["n_iter"] >= 0
        and math.isfinite(header["lower_bound"])
    ):
        raise ValueError(
            f"{path} is corrupt: the header's shapes do not agree (kernels "
            f"{shape}, dtype {header['dtype']!r}, channels "
            f"{header['n_channels_in']}, kernel_size {header['kernel_size']}, "
            f"padding {header['padding']}, n_iter {header['n_iter']}, lower_bound "
            f"{header['lower_bound']})"
        )
    nbytes = math.prod(shape) * np.dtype(header["dtype"]).itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ValueError(
            f"{path} declares kernels of {nbytes} bytes, more than the "
            f"{MAX_ARRAY_BYTES} calm_np reads; refusing to read it"
        )
    return header


def _variance(header, path):
    """σ², checked; files written before σ² was learned have none: 1.0."""
    try:
        variance = _checks.check_variance(header.get("variance", 1.0), "its variance")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} is corrupt: {exc}") from exc
    if not math.isfinite(1.0 / variance):
        raise ValueError(
            f"{path} is corrupt: its variance {variance!r} has no finite 1/σ²"
        )
    return variance


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _pair_ok(pair):
    return len(pair) == 2 and all(_int(p) and p >= 0 for p in pair)


def _params(header, cls, path):
    """The header's parameters, checked like ``fit`` checks them."""
    params = dict(header["params"])
    known = set(cls._get_param_names()) - {"callback"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"{path} has unknown parameters {unknown} (known: {sorted(known)}); "
            "it was not written by this calm_np"
        )
    if params.get("init") == "array":
        params["init"] = "kmeans++"
    for name in ("kernel_size", "padding", "pooling"):
        if isinstance(params.get(name), list):  # JSON has no tuples
            params[name] = tuple(
                tuple(v) if isinstance(v, list) else v for v in params[name]
            )
    defaults = cls().get_params()
    try:
        _checks.check_params({**defaults, **params})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a bad parameter: {exc}") from exc
    return params


def _expected(header, params, path):
    shape, dtype = tuple(header["kernels_shape"]), header["dtype"]
    expected = dict(
        kernels=(shape, dtype),
        weights=((shape[0],), dtype),
        lower_bounds=((header["n_iter"],), "float64"),
    )
    if params.get("whiten"):  # the whitening: (D,) and (D, D), D = c·kh·kw
        eps, D = header.get("whiten_eps"), math.prod(shape[1:])
        if not (_number(eps) and math.isfinite(eps) and eps > 0):
            raise ValueError(
                f"{path} is corrupt: whiten=True needs a header whiten_eps > 0, "
                f"got {eps!r}"
            )
        if D * D * np.dtype(dtype).itemsize > MAX_ARRAY_BYTES:
            raise ValueError(
                f"{path} declares a whitening matrix of {D}x{D}, more than the "
                f"{MAX_ARRAY_BYTES} bytes calm_np reads; refusing to read it"
            )
        expected.update(whiten_mean=((D,), dtype), whiten_matrix=((D, D), dtype))
    return expected


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_values(arrays, header, path):
    kernels, weights, bounds = (
        arrays["kernels"],
        arrays["weights"],
        arrays["lower_bounds"],
    )
    for name, a in (
        ("kernels", kernels),
        ("weights", weights),
        ("lower_bounds", bounds),
        *((name, arrays.get(name)) for name in WHITENING),
    ):
        if a is not None and not np.all(np.isfinite(a)):
            raise ValueError(f"{path} is corrupt: its {name} contain NaN or infinity")
    total = float(np.sum(weights, dtype=np.float64))
    if np.any(weights < 0) or not abs(total - 1.0) <= 1e-3:
        raise ValueError(
            f"{path} is corrupt: its weights must be non-negative and sum to 1, "
            f"got min {float(np.min(weights)):.3g} and sum {total:.6g}"
        )


# -- networks: one .npz holding each layer's own model file ---------------------
NETWORK_FORMAT = "calm_np.ConvolutionalMixtureNetwork"
NETWORK_PARAMS = ("activation", "batch_size", "normalize", "pool_size", "readout")
# written since issue 23; a file without them reads their defaults
NETWORK_PARAMS_OPTIONAL = ("n_components",)
MAX_NETWORK_MEMBER_BYTES = 2**31


def save_network(network, path):
    """Write a fitted network: a JSON header, per-channel statistics, and each
    layer as the bytes of the file :func:`save` writes for it."""
    arrays = {
        f"layer{i}": np.frombuffer(model_bytes(layer), dtype=np.uint8)
        for i, layer in enumerate(network.layers_)
    }  # made in memory: no temporary folder
    for i, (mean, scale) in enumerate(network.norms_):
        arrays[f"norm_mean{i}"] = np.asarray(mean, dtype=np.float64)
        # a whitening's projection (C, K) is stored flat; K is layer i's kernels
        arrays[f"norm_scale{i}"] = np.asarray(scale, dtype=np.float64).ravel()
    header = dict(
        format=NETWORK_FORMAT,
        format_version=FORMAT_VERSION,
        params={
            name: _plain(getattr(network, name))
            for name in NETWORK_PARAMS + NETWORK_PARAMS_OPTIONAL
        },
        n_layers=len(network.layers_),
        n_features=int(network.n_features_),
    )
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    write_replacing(path, lambda fh: np.savez(fh, header=blob, **arrays))


def load_network(cls, layer_cls, path, *, xp=None, device=None):
    """Read a network written by :func:`save_network`; every layer is read by
    :func:`load` (the estimator's checks) from the member's bytes in memory
    (no temporary folder), then the stack is checked whole."""
    header, arrays = _read_network(path)
    layers = []
    for i in range(header["n_layers"]):
        data, name = arrays[f"layer{i}"].tobytes(), f"layer{i}.npy"
        try:
            layers.append(load(layer_cls, name, xp=xp, device=device, data=data))
        except ValueError as exc:
            raise ValueError(f"{path}: layer {i} is not valid: {exc}") from exc
    norms = [
        (arrays[f"norm_mean{i}"], arrays[f"norm_scale{i}"])
        for i in range(header["n_layers"] - 1)
    ]
    whiten = header["params"].get("normalize") == "whiten"
    for i, (mean, scale) in enumerate(norms):
        k, c = layers[i].kernels_.shape[0], layers[i + 1].n_channels_in_
        if whiten:
            fits = mean.shape == (k,) and scale.shape == (c * k,)
            ok = bool(np.all(np.isfinite(scale)))
            norms[i] = (mean, scale.reshape(c, k)) if fits else (mean, scale)
        else:
            fits = mean.shape == scale.shape and mean.shape[0] in (1, k) and c == k
            ok = bool(np.all(scale > 0) and np.all(np.isfinite(scale)))
        if not fits:
            raise ValueError(
                f"{path} is corrupt: layer {i} has {k} kernels, layer {i + 1} "
                f"{c} channels and statistics of {mean.shape[0]} channels"
            )
        if not (np.all(np.isfinite(mean)) and ok):
            raise ValueError(f"{path} is corrupt: layer {i}'s statistics")
    unfitted = [layer_cls(**layer.get_params()) for layer in layers]
    network = cls(unfitted, **header["params"])
    try:
        network._check_params()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a bad parameter: {exc}") from exc
    network.layers_, network.norms_ = layers, norms
    if network.n_features_ != header["n_features"]:  # derived, never trusted
        raise ValueError(
            f"{path} is corrupt: its header says {header['n_features']} features "
            f"but its layers give {network.n_features_}"
        )
    return network


def _read_network(path):
    """``(header, arrays)`` of a network file: only known members, stored
    uncompressed, each ``.npy`` header checked before its bytes are read (the
    model file's rules, :func:`_array`)."""
    try:
        with _zip(path) as zf:
            sizes = _stored_sizes(zf, path)
            if "header" not in sizes or sizes["header"] > MAX_HEADER_BYTES:
                raise ValueError(f"{path} is not a calm_np network file")
            header = _network_header(_array(zf, "header", sizes, path, "uint8"), path)
            n = header["n_layers"]
            wanted = {f"layer{i}": "uint8" for i in range(n)}
            for i in range(n - 1):
                wanted[f"norm_mean{i}"] = wanted[f"norm_scale{i}"] = "float64"
            if set(sizes) != {*wanted, "header"}:
                raise ValueError(
                    f"{path} is corrupt: its arrays {sorted(sizes)} are not "
                    f"those of a {n}-layer network"
                )
            if max(sizes.values()) > MAX_NETWORK_MEMBER_BYTES:
                raise ValueError(f"{path} holds a member larger than calm_np reads")
            arrays = {
                name: _array(zf, name, sizes, path, dtype)
                for name, dtype in wanted.items()
            }
    except _UNREADABLE as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{path} is truncated or not an .npz file ({exc!r})") from exc
    return header, arrays


def _network_header(blob, path):
    try:
        header = json.loads(bytes(np.asarray(blob, dtype=np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise ValueError(
            f"{path} is corrupt: its header is not JSON ({exc!r:.200})"
        ) from exc
    if not isinstance(header, dict) or header.get("format") != NETWORK_FORMAT:
        raise ValueError(f"{path} is not a calm_np network file")
    version, n = header.get("format_version"), header.get("n_layers")
    if type(version) is not int or version < 1:
        raise ValueError(f"{path} has no valid format version ({version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version!r}; upgrade calm_np")
    params = header.get("params")
    if (
        type(n) is not int
        or not 1 <= n <= 1000
        or type(header.get("n_features")) is not int
        or not isinstance(params, dict)
        or not set(NETWORK_PARAMS) <= set(params)
        or not set(params) <= {*NETWORK_PARAMS, *NETWORK_PARAMS_OPTIONAL}
    ):
        raise ValueError(f"{path} is corrupt: bad network header {header!r:.200}")
    return header
