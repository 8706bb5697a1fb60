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
