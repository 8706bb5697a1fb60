"""The parameter table of the library functions around the estimator.

``_checks.PARAMS`` checks ``ConvolutionalMixture``'s parameters; this table
does the same for :mod:`calm_np.evaluation`, :mod:`calm_np.preprocessing`
and the folder loader: one checker per parameter *name*, so ``limit`` or
``batch_size`` mean, and are refused, the same way in every function.

:func:`check` returns the normalised value (NumPy scalars as Python
numbers) or raises ``TypeError`` (wrong kind) / ``ValueError`` (wrong
value) naming the parameter, the function and what to give instead.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from ._checks import _is_bool

__all__ = ["PARAMS", "check", "check_all"]


def _int(low):
    def checker(where, name, value):
        if not isinstance(value, numbers.Integral) or _is_bool(value):
            raise TypeError(f"{where}: {name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{where}: {name} must be >= {low}, got {value}")
        return int(value)

    return checker


def _optional(checker):
    def optional(where, name, value):
        return None if value is None else checker(where, name, value)

    return optional


def _real(positive):
    def checker(where, name, value):
        if not isinstance(value, numbers.Real) or _is_bool(value):
            raise TypeError(f"{where}: {name} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            need = "> 0" if positive else ">= 0"
            raise ValueError(
                f"{where}: {name} must be a finite number {need}, got {value!r}"
            )
        return value

    return checker


def _bool(where, name, value):
    if not _is_bool(value):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return bool(value)


def _choice(choices):
    def checker(where, name, value):
        if not isinstance(value, str):
            raise TypeError(
                f"{where}: {name} must be a string, one of {tuple(choices)}, got "
                f"{value!r}"
            )
        if value not in choices:
            raise ValueError(
                f"{where}: {name} must be one of {tuple(choices)}, got {value!r}"
            )
        return value

    return checker


def _path(where, name, value):
    if not isinstance(value, str | os.PathLike) or isinstance(value, bytes):
        raise TypeError(
            f"{where}: {name} must be a folder path (str or pathlib.Path), got "
            f"{value!r}"
        )
    if str(value) == "":
        raise ValueError(f"{where}: {name} is an empty path; give a folder")
    return value


def _dtype(where, name, value):
    try:  # np.dtype(None) is float64: None is refused, not read as that
        dtype = None if value is None else np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in ("float32", "float64"):
        raise ValueError(
            f"{where}: {name} must be 'float32' or 'float64', got {value!r}"
        )
    return dtype.name


def _window(where, name, value, *, none=""):
    """A positive int or a pair ``(h, w)`` of them, as ``(h, w)`` (``none``:
    what else the message says is allowed, ``"None, "`` for an optional one)."""
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        pair = tuple(pair)
    except TypeError:
        raise TypeError(
            f"{where}: {name} must be {none}an int or (h, w), got {value!r}"
        ) from None
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not _is_bool(v) and v >= 1 for v in pair
    ):
        raise ValueError(
            f"{where}: {name} must be {none}a positive int or (h, w), got {value!r}"
        )
    return int(pair[0]), int(pair[1])


def _optional_window(where, name, value):
    return None if value is None else _window(where, name, value, none="None, ")


# name -> checker(where, name, value); the names every public function of
# evaluation, preprocessing and the folder loader uses for these arguments
PARAMS = {
    "limit": _optional(_int(1)),
    "seed": _int(0),
    "batch_size": _int(1),
    "C": _real(positive=True),
    "tol": _real(positive=True),
    "max_iter": _int(1),
    "window": _window,
    "size": _optional_window,
    "dtype": _dtype,
    "data_dir": _optional(_path),
    "test": _bool,
    "progress": _bool,
}


def check(where, name, value, choices=None):
    """``value`` of parameter ``name`` of function ``where``, checked.

    ``choices`` (a tuple of strings) checks a named choice instead of the
    table's entry (a preset, data set or preprocessing name).
    """
    if choices is not None:
        return _choice(choices)(where, name, value)
    return PARAMS[name](where, name, value)


def check_all(where, **values):
    """:func:`check` of each keyword argument, in order; a dict of the results."""
    return {name: check(where, name, value) for name, value in values.items()}
