"""What a network's upper layers read while it fits (:mod:`calm_np._network`).

:class:`_ChannelStats` gathers the per-channel statistics that standardise
or whiten a layer's input; :class:`_Cache` keeps that input once computed
(in memory or a temporary memmap); :class:`_HostRows` moves cached rows to
the input's namespace as they are read; :class:`_Maps` computes the input
lazily from the images, batch by batch, when there is no cache.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np

from ._data import _release_pages
from ._xp import get_namespace, is_numpy_namespace, to_numpy, wide_float

# normalize="whiten": added to the eigenvalues of the channels' correlation
# matrix (which sum to the number of channels), as _whiten.EPS_ZCA for patches
EPS_CHANNELS = 0.1


class _ChannelStats:
    """Per-channel sums of maps ``(n, K, h, w)``, in the widest float, on the
    host: ``result()`` is ``(mean, scale)`` over images and positions; with
    ``second``, the sums of products of channels too, and ``whitening()``."""

    def __init__(self, second=False):
        self.total = self.total_sq = self.products = None
        self.count, self.second = 0, second

    def add(self, batch):
        if batch.shape[0] == 0:
            return
        xp = get_namespace(batch)[0]
        wide = xp.astype(batch, wide_float(xp))
        s1 = to_numpy(xp.sum(wide, axis=(0, 2, 3))).astype(np.float64)
        s2 = to_numpy(xp.sum(wide * wide, axis=(0, 2, 3))).astype(np.float64)
        self.total = s1 if self.total is None else self.total + s1
        self.total_sq = s2 if self.total_sq is None else self.total_sq + s2
        self.count += batch.shape[0] * batch.shape[2] * batch.shape[3]
        if self.second:
            flat = xp.reshape(xp.permute_dims(wide, (1, 0, 2, 3)), (wide.shape[1], -1))
            s3 = to_numpy(flat @ xp.permute_dims(flat, (1, 0))).astype(np.float64)
            self.products = s3 if self.products is None else self.products + s3

    def whitening(self, n_components):
        """``(mean, W)``: ``W`` (C, K) projects centred channels on the ``C``
        leading axes of their correlation, each scaled to about unit variance."""
        mean, scale = self.result()
        cov = self.products / self.count - np.outer(mean, mean)
        corr = cov / np.outer(scale, scale)
        lam, V = np.linalg.eigh(0.5 * (corr + corr.T))  # ascending
        keep = len(lam) if n_components is None else min(n_components, len(lam))
        lam, V = np.maximum(lam[::-1][:keep], 0.0), V[:, ::-1][:, :keep]
        W = (V / np.sqrt(lam + EPS_CHANNELS)).T / scale[None, :]
        return mean, W

    def result(self):
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean * mean, 0.0)
        # a constant channel is only centred
        scale = np.where(var > 1e-12, np.sqrt(var), 1.0)
        return mean, scale


class _Cache:
    """Where a fit keeps the inputs of the layers above the first
    (``cache="memory"``, ``"disk"`` or ``"auto"``); a context manager that
    deletes its temporary folder on exit."""

    def __init__(self, mode, memory_bytes):
        self.memory_bytes = memory_bytes  # "auto": in memory up to this many bytes
        self.mode, self.folder, self.files = mode, None, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.files.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def allocate(self, shape, like):
        """An empty cache of ``shape``, of ``like``'s dtype: an array of its
        namespace on its device, or a NumPy memmap."""
        xp, device = get_namespace(like)
        dtype = to_numpy(like[:1, ...]).dtype
        mode = self.mode
        if mode == "auto":
            nbytes = math.prod(shape) * dtype.itemsize
            mode = "memory" if nbytes <= self.memory_bytes else "disk"
        if mode == "memory":
            return xp.empty(shape, dtype=like.dtype, device=device)
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="calm_np_cache_")
        path = os.path.join(self.folder, f"maps{len(self.files)}.dat")
        out = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
        self.files[id(out)] = (path, xp, device)
        return out

    def write(self, out, start, maps):
        stop = start + maps.shape[0]
        if isinstance(out, np.memmap):
            out[start:stop] = to_numpy(maps)
            _release_pages(out, start, stop)
        else:
            out[start:stop, ...] = maps

    def standardize(self, out, norm, step):
        """``(out − mean) / scale`` per channel, in place, ``step`` images at a time."""
        host = isinstance(out, np.memmap)
        xp, device = (np, None) if host else get_namespace(out)
        mean, scale = (
            xp.reshape(xp.asarray(a, dtype=out.dtype, device=device), (1, -1, 1, 1))
            for a in norm
        )
        for start in range(0, out.shape[0], step):
            stop = min(start + step, out.shape[0])
            out[start:stop, ...] = (out[start:stop, ...] - mean) / scale
            if host:
                _release_pages(out, start, stop)

    def reader(self, out):
        """What the layer above fits on: the cache, or, for a memmap of maps of
        another namespace, rows moved there as they are read."""
        if isinstance(out, np.memmap):
            out.flush()
            _, xp, device = self.files[id(out)]
            if not is_numpy_namespace(xp):
                return _HostRows(out, xp, device)
        return out

    def release(self, data):
        """Drop the cache ``data`` (a previous layer's input), if it is one."""
        rows = data.rows if isinstance(data, _HostRows) else data
        entry = self.files.pop(id(rows), None)
        if entry is not None:
            del rows
            try:
                os.remove(entry[0])
            except OSError:  # pragma: no cover - still mapped (Windows)
                pass


class _HostRows:
    """A memmap of maps read by slices (or sorted indices) and moved to the
    namespace ``xp`` and ``device`` of the images it came from."""

    def __init__(self, rows, xp, device):
        self.rows, self.xp, self.device = rows, xp, device
        self.shape, self.ndim = tuple(rows.shape), 4

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        out = self.xp.asarray(np.array(self.rows[key]), device=self.device)
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.shape[0])
            _release_pages(self.rows, start, stop)
        return out


class _Maps:
    """The input of a layer above the first: ``encode`` applied to rows of ``X``.

    For an ``X`` read by slices (arrays, memmaps, Dask, lazy arrays) this is
    itself sliceable (``shape``, ``__getitem__``), so a layer's
    ``ImageSource`` reads it batch by batch and samples rows without
    computing the others.  For an iterable ``X`` it is a re-iterable of
    mapped batches (``ImageSource`` then counts images by one extra pass).
    Its rows are maps ``(n, K, Ho, Wo)``, channels-first by construction:
    ``channels_first`` tells ``ImageSource`` not to question their layout.
    """

    channels_first = True

    def __init__(self, source, encoder):
        self.source, self.encoder = source, encoder
        if source.kind != "iterable":
            first = encoder(source.take([0]))
            self.shape = (source.n_samples, *first.shape[1:])
            self.dtype, self.ndim = first.dtype, 4

    def __getattribute__(self, name):
        # an iterable X has no row access: hide ``shape`` so that
        # ImageSource treats this object as a re-iterable of batches
        if (
            name in ("shape", "__getitem__")
            and object.__getattribute__(self, "source").kind == "iterable"
        ):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.shape[0])
            rows = self.source._slice(start, stop)
            if self.source.kind == "dask":
                rows = rows.compute()
        else:
            rows = self.source.take(np.asarray(key).tolist())
        return self.encoder(rows)

    def __iter__(self):
        for batch in self.source.batches():
            yield self.encoder(batch)

    def head(self, n_max, step):
        """Mapped batches of at most ``step`` images covering the first ``n_max``."""
        if self.source.kind != "iterable":
            n = min(n_max, self.shape[0])
            for start in range(0, n, step):
                yield self[start : min(start + step, n)]
            return
        seen = 0
        for batch in self.source.batches():
            batch = batch[: n_max - seen]
            for start in range(0, batch.shape[0], step):
                yield self.encoder(batch[start : start + step])
            seen += batch.shape[0]
            if seen >= n_max:
                return
