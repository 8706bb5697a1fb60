"""Where images come from during a fit: one interface for every source.

``ImageSource`` hides whether ``X`` is an in-memory array (any namespace), a
NumPy memmap (read batch by batch, never whole), a re-iterable of batches, or
a Dask array (statistics computed on the workers).  The estimator only asks a
source for a few sampled images (``take``), an evenly spaced sample as a
source of its own (``spaced``, where moves are screened), the statistics of
a pass (``statistics``) and a per-batch function's results (``map``: a loop
over batches, or a lazy ``dask.array`` for Dask input); this class is the
one place that dispatches on the kind of input.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping

from . import _checks, _image_checks
from ._dask import is_dask_array
from ._em import batch_statistics
from ._xp import get_namespace, is_array_api_obj


class ImageSource:
    """Batches of images ``(n, c, H, W)`` with the fit's validation applied.

    Parameters
    ----------
    X : array, memmap, Dask array, or re-iterable of batches
    batch_size : int or None
        Images per batch for arrays; ``None`` is all at once.  An iterable's
        own batches are used as they come.
    layout : bool, default=True
        Refuse a channels-last batch (``_image_checks.check_channels_first``), as a
        fit must: it learns the channel count from ``X``.  ``False`` where
        the count is checked against a fitted model instead (``check``), and
        for an ``X`` that says it is channels-first (a network's maps, whose
        ``channels_first`` attribute is True).
    """

    def __init__(self, X, batch_size=None, name="X", layout=True):
        self.batch_size = batch_size
        self.kind = None
        self.layout = layout = layout and not getattr(X, "channels_first", False)
        if is_dask_array(X):
            self.kind = "dask"
            self.X = _checks.check_images(X, name, layout=layout)
        elif is_array_api_obj(X):
            self.kind = "array"
            self.X = _checks.check_images(_checks.detached(X), name, layout=layout)
        elif isinstance(X, (list, tuple)) and X and is_array_api_obj(X[0]):
            if X[0].ndim not in (3, 4):
                raise ValueError(
                    f"{name}: a list of batches must hold arrays of shape "
                    "(n, c, H, W) or (n, H, W)"
                )
            self.kind = "iterable"
            self.X = X
        elif isinstance(X, (list, tuple)):
            self.kind = "array"
            X = _checks.as_array(X, name)
            self.X = _checks.check_images(X, name, layout=layout)
        elif _is_lazy_array(X):
            # array-like read by slices (e.g. calm_np.datasets' STL-10 memmap):
            # each batch is converted when it is read, never the whole
            self.kind = "lazy"
            if len(X.shape) not in (3, 4):  # the usual error, with X's shape:
                import numpy as np  # checked on a zero-stride view (no memory)

                _checks.check_images(np.broadcast_to(np.float32(0), X.shape), name)
            if layout or len(X.shape) == 3:  # as check_images
                _image_checks.check_channels_first(tuple(X.shape), name)
            self.X = X
        elif isinstance(X, (str, bytes, Mapping)):
            raise TypeError(
                f"{name} must be an array of images, a NumPy memmap, a Dask "
                f"array or a re-iterable of batches, got {type(X).__name__}"
            )
        elif isinstance(X, Iterator):
            raise TypeError(
                f"{name} is a one-shot iterator, but EM reads the data once per "
                "iteration; pass a re-iterable (a list of batches, or an object "
                "whose __iter__ returns a fresh iterator)"
            )
        elif isinstance(X, Iterable):
            self.kind = "iterable"
            self.X = X
        else:
            raise TypeError(
                f"{name} must be an array of images, a NumPy memmap, a Dask "
                f"array or a re-iterable of batches, got {type(X).__name__}"
            )
        self._n = None
        # the images' values were checked (finite, in range): after
        # validate(), or after one whole pass that checked every batch; the
        # passes after that trust them (no host sync per batch)
        self.validated = False
        first = self._first_batch()
        if first.ndim == 3:
            first = first[:, None, ...]
        self.xp, self.device = get_namespace(first)
        self.n_channels = first.shape[1]
        self.image_shape = tuple(first.shape[2:])
        self.dtype_source = first.dtype

    def validate(self):
        """Check an in-memory array's values once, at the boundary (one
        reduction, one host sync); its passes then trust them.  Memmaps,
        lazy arrays and iterables are checked batch by batch on their first
        pass instead (never read whole up front); Dask chunks on the
        workers, on every pass."""
        import numpy as np

        if self.kind == "array" and not isinstance(self.X, np.memmap):
            xp = self.xp
            step = self.batch_size or 1024  # temporaries of one batch
            _checks.check_images_finite(self.X, "X", xp, step, self.work_dtype)
            self.validated = True
        return self

    def check(self, kernel_size, padding, n_channels=None, n_kernels=None):
        """Refuse images too small for the kernels, or with the wrong channels.

        Returns the map shape ``(Ho, Wo)``.  With ``n_kernels`` and
        ``batch_size=None``, sets the automatic batch size: about
        ``_checks.AUTO_BATCH_BYTES`` of maps per batch.
        """
        Hp, Wp = _checks.check_sizes(self.image_shape, kernel_size, padding)
        if n_channels is not None and self.n_channels != n_channels:
            hint = ""
            if self.image_shape[1] == n_channels:  # (n, H, W, C) read as C-first
                hint = (
                    f"; its last axis holds {n_channels}: if X is channels-last "
                    "(n, H, W, C), pass np.moveaxis(X, -1, 1)"
                )
            raise ValueError(
                f"X has {self.n_channels} channel(s) but the model was fitted on "
                f"{n_channels}; pass images with {n_channels} channel(s){hint}"
            )
        map_shape = (Hp - kernel_size[0] + 1, Wp - kernel_size[1] + 1)
        if self.batch_size is None and n_kernels is not None:
            self.batch_size = _checks.auto_batch_size(n_kernels, map_shape)
        return map_shape

    # -- shape ---------------------------------------------------------------
    def _first_batch(self):
        if self.kind in ("array", "dask", "lazy"):
            if self.X.shape[0] == 0:
                raise ValueError("X contains no images; pass at least one image")
            first = self._slice(0, 1)
            return first.compute() if self.kind == "dask" else first
        for batch in self._iter_raw():  # the first batch holding images
            if batch.shape[0] > 0:
                return batch
        raise ValueError("X contains no images; pass at least one image")

    @property
    def work_dtype(self):
        """The floating dtype a fit computes in (integer images become float)."""
        zeros = self.xp.zeros((0,), dtype=self.dtype_source)
        return _checks.float_dtype(self.xp, [(zeros, "X")], self.device)

    @property
    def n_samples(self):
        if self._n is None:
            if self.kind in ("array", "dask", "lazy"):
                self._n = int(self.X.shape[0])
            else:
                self._n = sum(int(b.shape[0]) for b in self._iter_raw())
        return self._n

    # -- reading -------------------------------------------------------------
    def _iter_raw(self):
        name, layout = "each batch of X", self.layout
        for batch in self.X:
            yield _checks.check_images(_checks.detached(batch), name, layout=layout)

    def batches(self):
        """Yield batches ``(n_b, c, H, W)``, each checked for shape."""
        if self.kind == "iterable":
            for batch in self._iter_raw():
                if tuple(batch.shape[1:]) != (self.n_channels, *self.image_shape):
                    raise ValueError(
                        "every batch of X must have the same image shape "
                        f"{(self.n_channels, *self.image_shape)}, got "
                        f"{tuple(batch.shape[1:])}"
                    )
                if get_namespace(batch)[0] is not self.xp:
                    raise TypeError(
                        "every batch of X must come from one array library; got a "
                        f"{type(batch).__module__.split('.')[0]} batch among "
                        f"{self.xp.__name__.split('.')[-1]} ones; convert them all"
                    )
                yield batch
            return
        n = self.n_samples
        step = n if self.batch_size is None else self.batch_size
        for start in range(0, n, max(step, 1)):
            stop = min(start + step, n)
            yield self._slice(start, stop)
            _release_pages(self.X, start, stop)

    def _slice(self, start, stop):
        if self.kind == "lazy":
            rows = _checks.as_array(self.X[start:stop], "X")
            return _checks.check_images(rows, layout=False)  # checked whole
        return self.X[start:stop, ...]

    def take(self, indices):
        """Images at sorted global ``indices`` (host ints), same for any batching."""
        xp = self.xp
        if self.kind == "lazy":
            import numpy as np

            rows = self.X[np.asarray(indices, dtype=np.intp)]
            return _checks.check_images(_checks.as_array(rows, "X"), layout=False)
        if self.kind == "array":
            if _is_numpy_like(self.X):
                import numpy as np

                idx = np.asarray(indices, dtype=np.intp)
                if not isinstance(self.X, np.memmap):
                    return np.asarray(self.X[idx])
                # scattered reads map whole neighbourhoods of the file: read a
                # few rows at a time and let those pages go before the next
                rows = np.empty((len(idx), *self.X.shape[1:]), dtype=self.X.dtype)
                for s in range(0, len(idx), 32):
                    rows[s : s + 32] = self.X[idx[s : s + 32]]
                    _release_pages(self.X, 0, self.n_samples)
                return rows
            idx = xp.asarray(indices, dtype=xp.int64, device=self.device)
            return xp.take(self.X, idx, axis=0)
        if self.kind == "dask":
            import numpy as np

            return self.X[np.asarray(indices, dtype=np.intp)].compute()
        wanted = list(indices)
        out, pos, offset = [], 0, 0
        for batch in self.batches():
            nb = batch.shape[0]
            local = []
            while pos < len(wanted) and wanted[pos] < offset + nb:
                local.append(wanted[pos] - offset)
                pos += 1
            if local:
                idx = xp.asarray(local, dtype=xp.int64, device=self.device)
                out.append(xp.take(batch, idx, axis=0))
            offset += nb
            if pos == len(wanted):
                break
        return xp.concat(out, axis=0)

    def sample(self, count):
        """At most ``count`` images, evenly spaced from the first to the last,
        read at most ``batch_size`` at a time (a lazy source, such as a
        network's maps, computes the rows it is asked for at once).  An
        iterable of batches gives its first ``count`` images instead: reading
        them stops there, where spacing them would cost a whole pass."""
        import numpy as np

        n = self.n_samples
        if self.kind == "iterable":
            indices = np.arange(min(n, count))
        else:
            indices = np.linspace(0, n - 1, min(n, count)).astype(np.intp)
            indices = np.unique(indices)
        step = min(self.batch_size or count, count)
        pieces = [
            self.take(indices[s : s + step].tolist())
            for s in range(0, len(indices), step)
        ]
        return self.xp.concat(pieces, axis=0) if len(pieces) > 1 else pieces[0]

    def spaced(self, count):
        """An :class:`ImageSource` of every ``n // count``-th image, from the
        first to the last (``count`` to ``2·count`` images, evenly spread
        over all of them), the same whatever the batching: a strided view of
        an array (a memmap or a Dask array stays lazy, read batch by batch),
        a copy of the images otherwise."""
        step = max(self.n_samples // count, 1)
        if self.kind in ("array", "dask"):
            images = self.X[::step, ...]
        else:
            images = self.take(list(range(0, self.n_samples, step)))
        sample = ImageSource(images, batch_size=self.batch_size, layout=False)
        sample.validated = self.validated
        return sample

    def statistics(self, kernels, log_weights, options, margin=0, progress=None):
        """Exact statistics of one pass over all the images
        (docs/user_guide/model.rst §2), under
        ``options`` (an ``_em.Options``).

        ``margin > 0`` gives :func:`calm_np._em.window_statistics` instead.
        Batches are trusted once the images are :attr:`validated`: nothing
        is read back from the device until the caller reads the statistics.
        """
        if self.kind == "dask":
            from . import _dask

            args = dict(log_weights=log_weights, options=options, margin=margin)
            return _dask.statistics(self.X, kernels, **args)
        total, trusted = None, self.validated
        for batch in self.batches():
            stats = batch_statistics(
                batch, kernels, log_weights, options, margin, trusted
            )
            total = stats if total is None else total + stats
            if progress is not None:
                progress(int(batch.shape[0]))
        self.validated = True  # every batch was checked on this pass
        return total

    def map(self, func, *, kind="map", n_features=None):
        """``func(batch)`` of every batch, concatenated along the images.

        ``func`` returns ``(n_b,)`` or ``(n_b, n_features)``.  For Dask input
        the result is a lazy Dask array (``func`` must then be picklable, as
        :func:`calm_np._readouts.bind` makes it); ``kind`` labels its tasks.
        """
        if self.kind == "dask":
            from . import _dask

            return _dask.map_images(func, self.X, kind=kind, n_features=n_features)
        outs = [func(batch) for batch in self.batches()]
        return self.xp.concat(outs, axis=0) if len(outs) > 1 else outs[0]


def progress_bar(verbose):
    """A tqdm bar over the images of a pass (``verbose >= 2``), or a no-op.

    Used as a context manager; the no-op yields ``None``.
    """
    if verbose >= 2:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=None, unit="img", leave=False)
    return contextlib.nullcontext()


def report(model, it, run, objective, change, t0):
    """One line per EM iteration of ``model``'s fit, when ``verbose >= 1``."""
    if model.verbose >= 1:
        prefix = f"init {run + 1} " if model.n_init > 1 else ""
        print(
            f"{prefix}iter {it:4d}  objective {objective:.6f}  "
            f"change {change:+.3e}  {time.perf_counter() - t0:.2f} s",
            flush=True,
        )


def _release_pages(X, start, stop):
    """Drop a memmap's rows ``[start, stop)`` from this process's memory.

    Pages of a file mapping stay resident after they are read, so a pass
    over a large memmap would grow the process's RSS to the file's size.
    ``MADV_DONTNEED`` unmaps them (the data stays in the file and the OS
    page cache), keeping resident memory bounded by the batch.  Skipped for
    copy-on-write maps (their changes live only in those pages) and where
    the platform has no ``madvise``.
    """
    import mmap

    import numpy as np

    if not isinstance(X, np.memmap) or getattr(X, "mode", "c") == "c":
        return
    if not X.flags.c_contiguous:  # a strided sample: its rows are not a range
        return
    raw = getattr(X, "_mmap", None)
    if raw is None or not hasattr(raw, "madvise") or start >= stop:
        return
    try:
        base = np.frombuffer(raw, dtype=np.uint8).ctypes.data
        rows = X[start:stop]
        first = rows.ctypes.data - base
        last = first + rows.nbytes
        page = mmap.PAGESIZE
        # whole pages inside the rows only: neighbours may still be in use
        lo = -(-first // page) * page
        hi = (last // page) * page
        if hi > lo:
            raw.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (AttributeError, OSError, ValueError, BufferError):
        return  # an optimisation only


def _is_lazy_array(X):
    """Sliceable with a shape but no array-API namespace (read batch-wise)."""
    shape = getattr(X, "shape", None)
    return (
        isinstance(shape, tuple)
        and hasattr(X, "__getitem__")
        and not isinstance(X, (str, bytes))
    )


def _is_numpy_like(X):
    import numpy as np

    return isinstance(X, np.ndarray)


def checked_source(X, params, fitted=None, readout=False):
    """``X`` as an ``ImageSource``, checked against the model it will meet.

    ``params`` are the checked parameters (``_checks.check_params``).  The one
    consistency rule for fitted state: a fit that continues a fitted model
    (``warm_start``, ``partial_fit``; ``fitted`` is then its ``n_kernels``,
    ``kernel_size``, ``padding``, ``whiten`` and ``n_channels``) needs the same
    values, or raises a ``ValueError`` naming both (the model is untouched); a
    fresh fit (``fitted=None``) starts over whatever the previous shapes.
    Also sizes the automatic batch and refuses models the data cannot support
    (``readout=True``: reading out a fitted model, no initialisation).
    """
    # the layout is checked where the channel count is learned (a fresh fit);
    # a fitted model checks the count against its own instead (check below)
    source = ImageSource(X, params["batch_size"], layout=not fitted and not readout)
    fitted = fitted or {}
    for name in ("n_kernels", "kernel_size", "padding", "whiten"):
        if name in fitted and params[name] != fitted[name]:
            value = fitted[name]
            raise ValueError(
                f"{name}={params[name]!r} differs from the fitted model's "
                f"{value!r}; a warm start or partial_fit continues the "
                f"fitted model, so set {name}={value!r}, or fit afresh "
                "with warm_start=False"
            )
    map_shape = source.check(
        params["kernel_size"],
        params["padding"],
        fitted.get("n_channels"),
        params["n_kernels"],
    )
    source.validate()
    n_patches = None
    if not readout and source.kind != "iterable":
        n_patches = source.n_samples * map_shape[0] * map_shape[1]
    _checks.check_model_size(params, map_shape, n_patches)
    return source
