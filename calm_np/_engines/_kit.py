"""What the chunked passes need from a namespace beyond the standard.

The passes (:mod:`._plans`) are written once against the array API.  A
:class:`Kit` lends them the few things the standard lacks, each a
measured speed-up and never a different result:

* ``out=`` buffers: the namespaces whose own functions take ``out=``
  (NumPy, CuPy, PyTorch) write GEMMs and elementwise results into reused
  scratch memory (:meth:`Kit.matmul`, :meth:`Kit.apply`); elsewhere a new
  array comes back;
* worker threads over chunks on the CPU (NumPy, PyTorch: ``_pool``); a
  GPU parallelises inside each operation;
* strided window copies (NumPy's ``sliding_window_view``; elsewhere one
  slice per window row);
* the size of a chunk: a few megabytes on a CPU (the maps stay in cache
  from the E-step to the M-step), hundreds on a GPU (enough work per
  kernel launch).

``_xp.native_paths(False)`` turns all of them off, so the tests can keep
the native branches equal to the plain standard code.  The scratch arrays
and in-place updates rely on slices and reshapes of contiguous arrays being
views, as they are in NumPy, CuPy, PyTorch and array-api-strict.
"""

from __future__ import annotations

import math

from .._xp import device_of, flush_tiny_inplace, out_module, use_native

# Bytes of maps and patches a chunk aims at, per device kind: the CPU value
# keeps a chunk's work in cache (the NumPy passes' tuning, issue 11); a GPU
# wants large launches.  Images per chunk are capped by MAX_CHUNK_IMAGES.
CHUNK_BYTES = {"cpu": 1.0, "gpu": 64.0}
MAX_CHUNK_IMAGES = {"cpu": 256, "gpu": 8192}


class Kit:
    """A namespace's means for one chunked pass (see the module docstring).

    Attributes: ``xp``, ``device``, ``dtype`` (the pass's float dtype),
    ``wide`` (the accumulators'), ``threads`` (chunks on worker threads),
    ``on_host`` (reading a value back costs no device sync: NumPy).
    """

    def __init__(self, xp, device, dtype, wide):
        self.xp, self.device, self.dtype, self.wide = xp, device, dtype, wide
        native = use_native(xp)
        self.raw = out_module(xp)  # functions that take out=, or None
        self.kind = "gpu" if _on_gpu(native, device) else "cpu"
        # worker threads over chunks: whose operations then run on one thread
        cpu_threads = native in ("numpy", "torch") and self.kind == "cpu"
        self.threads = native if cpu_threads else None
        self.strided = native == "numpy"
        self.on_host = native == "numpy"

    @classmethod
    def of(cls, array, wide):
        from .._xp import get_namespace

        xp, device = get_namespace(array)
        return cls(xp, device, array.dtype, wide)

    # -- sizes -------------------------------------------------------------------
    def chunk_images(self, per_image_bytes, budget):
        """Images per chunk: ``budget`` bytes (the plan's CPU figure) scaled
        for the device kind, over ``per_image_bytes``."""
        total = budget * CHUNK_BYTES[self.kind]
        cap = MAX_CHUNK_IMAGES[self.kind]
        return max(1, min(cap, int(total // max(per_image_bytes, 1))))

    # -- arrays ------------------------------------------------------------------
    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=dtype or self.dtype, device=self.device)

    def asarray(self, a, dtype=None):
        """A host (NumPy) constant on the pass's namespace and device."""
        return self.xp.asarray(a, dtype=dtype or self.dtype, device=self.device)

    def scratch(self):
        return Scratch(self)

    # -- operations with out= where the namespace has it -------------------------
    def matmul(self, a, b, out=None):
        """``a @ b``; with ``out``, written into ``out`` (without a temporary
        where the namespace's own matmul takes ``out=``) and returned."""
        if out is None:
            return self.xp.matmul(a, b)
        if self.raw is None:
            out[...] = self.xp.matmul(a, b)
            return out
        return self.raw.matmul(a, b, out=out)

    def stacked_matmul(self, a, b, out=None):
        """``a @ b`` over a leading axis.  NumPy: one 2-D GEMM per index (its
        stacked matmul falls back to a slow loop for some shapes, e.g. 82
        columns; a plain GEMM never does); elsewhere one batched call."""
        if self.strided and out is not None:
            for f in range(a.shape[0]):
                self.raw.matmul(a[f], b[f], out=out[f])
            return out
        return self.matmul(a, b, out)

    def apply(self, name, *args, out=None):
        """The elementwise function ``name`` of ``args`` (``exp``,
        ``subtract``, …); with ``out``, written into ``out`` and returned."""
        if out is None or self.raw is None:
            result = getattr(self.xp, name)(*args)
            if out is None:
                return result
            out[...] = result
            return out
        return getattr(self.raw, name)(*args, out=out)

    def exp_flushed(self, E):
        """``exp(E)`` in place, probabilities near 0 flushed to 0 or at least
        ``tiny / eps`` (:func:`calm_np._xp.flush_tiny_inplace`).

        Logs below ``log(tiny / eps) − 2`` are raised to it first: their
        probabilities are flushed to 0 either way (``exp`` of that bound is
        below ``tiny / (2 eps)``), so the results are the same to the bit,
        but ``exp`` no longer computes subnormal results, which both NumPy
        and PyTorch compute several times slower than normal ones (peaked
        posteriors have many).
        """
        xp, info = self.xp, self.xp.finfo(E.dtype)
        floor = math.log(float(info.smallest_normal) / float(info.eps)) - 2.0
        if self.raw is not None and self.strided:  # NumPy
            self.raw.maximum(E, floor, out=E)
        elif self.raw is not None and hasattr(self.raw, "clamp"):  # PyTorch
            self.raw.clamp(E, min=floor, out=E)
        elif self.raw is not None:  # CuPy
            self.raw.maximum(E, floor, out=E)
        else:
            E[...] = xp.clip(E, min=floor)
        self.apply("exp", E, out=E)
        return flush_tiny_inplace(E, xp)

    def windows(self, src, axis, size, at, out):
        """The ``size`` windows of ``n = src.shape[axis] - size + 1`` along
        ``axis`` of ``src``, stacked at axis ``at`` of ``out``: ``out`` is
        ``src``'s shape with ``axis`` of length ``n`` and a window axis of
        ``size`` inserted at ``at`` (``at <= axis``).  NumPy: one copy of a
        strided view; elsewhere one slice copy per window offset."""
        n = src.shape[axis] - size + 1
        if self.strided:
            from numpy.lib.stride_tricks import sliding_window_view

            view = sliding_window_view(src, size, axis=axis)  # window axis last
            out[...] = self.xp.moveaxis(view, -1, at)
            return out
        for i in range(size):
            cut = (slice(None),) * axis + (slice(i, i + n), ...)
            out[(slice(None),) * at + (i, ...)] = src[cut]
        return out

    def patches(self, Xc, window, out):
        """``out`` (c, wh, ww, m, Ho, Wo) = the ``wh × ww`` windows of the
        images ``Xc`` (m, c, Hp, Wp), channel first: the patch matrix's
        layout.  NumPy: one copy of a strided view; elsewhere the column
        windows, then the row windows of those (``wh + ww`` slice copies)."""
        xp = self.xp
        wh, ww = window
        if self.strided:
            from numpy.lib.stride_tricks import sliding_window_view

            view = sliding_window_view(Xc, window, axis=(2, 3))  # (m,c,Ho,Wo,wh,ww)
            out[...] = view.transpose(1, 4, 5, 0, 2, 3)
            return out
        c, _, _, m, Ho, Wo = out.shape
        Xt = xp.permute_dims(Xc, (1, 0, 2, 3))  # (c, m, Hp, Wp)
        shape = (c, ww, m, Xc.shape[2], Wo)
        cols = xp.empty(shape, dtype=out.dtype, device=self.device)
        self.windows(Xt, 3, ww, 1, cols)  # (c, ww, m, Hp, Wo)
        return self.windows(cols, 3, wh, 1, out)


class Scratch:
    """Reused scratch arrays, one set per worker (views of flat allocations).

    Fresh multi-megabyte arrays per chunk cost page faults and zeroing
    (~20 % of a chunk's time for STL-10-sized maps on NumPy); views of one
    flat allocation work for every chunk size up to the largest.
    """

    def __init__(self, kit):
        self.kit = kit
        self.flat = {}

    def get(self, name, shape, dtype=None):
        kit = self.kit
        size = math.prod(shape)
        buf = self.flat.get(name)
        if buf is None or buf.shape[0] < size:
            dtype = dtype or kit.dtype
            buf = kit.xp.empty((size,), dtype=dtype, device=kit.device)
            self.flat[name] = buf
        return kit.xp.reshape(buf[:size], shape)


def _on_gpu(native, device):
    if native == "cupy":
        return True
    if native == "torch":
        return getattr(device, "type", "cpu") != "cpu"
    return False


def kit_for(array, wide):
    """The :class:`Kit` of ``array``'s namespace and device, in its dtype."""
    from .._xp import array_namespace

    xp = array_namespace(array)
    return Kit(xp, device_of(array), array.dtype, wide)


def np_name(dtype):
    """NumPy's name of any namespace's float dtype (``float32``, ``float64``)."""
    import numpy as np

    try:
        return np.dtype(dtype).name
    except TypeError:  # torch.float32, array_api_strict.float32
        return str(dtype).rsplit(".", 1)[-1]
