"""Backends, dtypes and hypothesis profiles shared by every test.

The ``xp`` fixture runs a test on NumPy, array-api-strict (pinned to the
2023.12 standard, with and without the fft extension), PyTorch (CPU) and CuPy.
A backend that is not installed, or CuPy without a GPU, is *skipped* and
reported as such (``-ra``).  Each backend has its own mark: ``pytest -m cupy``
on the GPU machine runs the CuPy cases only.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.differing_executors,
        HealthCheck.function_scoped_fixture,
    ],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.differing_executors,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


class Backend:
    """A namespace plus how to move NumPy test data onto it."""

    def __init__(self, name, xp, device=None):
        self.name, self.xp, self.device = name, xp, device

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(dtype)
        if self.name == "torch":
            import torch

            return torch.asarray(a.copy())
        return self.xp.asarray(a, device=self.device)

    def __repr__(self):
        return self.name


def _make_backend(name):
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp)
    if name in ("array_api_strict", "strict_nofft"):
        strict = pytest.importorskip("array_api_strict")
        return Backend(name, strict)
    if name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp

        return Backend(name, xp)
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("cupy installed but no GPU")
        except Exception as exc:  # noqa: BLE001 - any CUDA error means no GPU
            pytest.skip(f"cupy installed but no usable GPU ({exc})")
        import array_api_compat.cupy as xp

        return Backend(name, xp)
    raise ValueError(name)


BACKENDS = ["numpy", "array_api_strict", "strict_nofft", "torch", "cupy"]
BACKEND_PARAMS = [pytest.param(b, marks=getattr(pytest.mark, b)) for b in BACKENDS]
# backends with an fft (for engine comparisons)
FFT_BACKEND_PARAMS = [p for p in BACKEND_PARAMS if p.values[0] != "strict_nofft"]


def _with_flags(name):
    """array-api-strict pinned to 2023.12; ``strict_nofft`` also drops fft."""
    if name not in ("array_api_strict", "strict_nofft"):
        return contextlib.nullcontext()
    strict = pytest.importorskip("array_api_strict")
    ext = ("linalg",) if name == "strict_nofft" else ("linalg", "fft")
    return strict.ArrayAPIStrictFlags(api_version="2023.12", enabled_extensions=ext)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    with _with_flags(request.param):
        yield _make_backend(request.param)


@pytest.fixture(params=FFT_BACKEND_PARAMS)
def fft_backend(request):
    with _with_flags(request.param):
        yield _make_backend(request.param)


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param
