"""The row transforms of the row-DFT plan (``_plans.RowDFTPlan``), as GEMMs.

A real row of ``n`` samples, zero-padded to ``F``, has ``F // 2 + 1``
spectral bins, stored in ``ns = (F + 1) // 2`` *slots* of (re, im) pairs:
slot 0 holds the two purely real bins, DC and (for even ``F``) Nyquist, so
no GEMM row is spent on an imaginary part that is always zero; slot
``s >= 1`` holds bin ``s``.  A transform is one GEMM with a DFT matrix.

Radix-2 fold.  When ``F`` is a multiple of 4, bin ``s``'s basis at sample
``x + F/2`` is ``(-1)^s`` times that at ``x`` (slot 0's two bins are both
even).  A map row of ``Wo > F/2`` samples then comes back from the even
slots and the odd slots by two half-size GEMMs and a butterfly (``y[x] =
even[x] + odd[x]``, ``y[x + F/2] = even[x] - odd[x]``), and goes forward by
the butterfly then two half-size GEMMs: ``F·F/2`` multiply-adds per row
instead of ``F·Wo`` (41 % fewer for STL-10's 96-sample rows), at the price
of two elementwise passes.  The slots are then kept in *transform order*
(even slots first, then odd; slot 0 stays first), which the plan uses for
everything it stores per slot.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=64)
def dft_matrices(F, n_in, n_out, dtype_name):
    """Real DFT matrices for rows of length ``n_in`` zero-padded to ``F``.

    ``fwd`` (n_in, ns, 2): row @ fwd = the row's slots.
    ``inv`` (ns, 2, n_out): slots -> first ``n_out`` samples of the irfft.
    """
    import numpy as np

    ns = (F + 1) // 2
    s = np.arange(ns)
    x_in = np.arange(n_in)
    theta = 2 * np.pi * np.outer(x_in, s) / F
    fwd = np.stack([np.cos(theta), -np.sin(theta)], axis=-1)
    fwd[:, 0, 1] = (-1.0) ** x_in if F % 2 == 0 else 0.0  # Nyquist
    x_out = np.arange(n_out)
    theta = 2 * np.pi * np.outer(s, x_out) / F
    inv = np.stack([np.cos(theta), -np.sin(theta)], axis=1) * (2.0 / F)
    inv[0, 0] = 1.0 / F  # DC
    inv[0, 1] = (-1.0) ** x_out / F if F % 2 == 0 else 0.0  # Nyquist
    # exact zeros where cos/sin vanish (not 1e-17): keeps products normal
    fwd[np.abs(fwd) < 1e-12] = 0.0
    inv[np.abs(inv) < 1e-12] = 0.0
    return fwd.astype(dtype_name), inv.astype(dtype_name)


def folds(F, Wo):
    """Whether maps of ``Wo``-sample rows use the radix-2 fold: ``F`` a
    multiple of 4 and ``Wo >= 3F/4`` (below that the butterfly's two passes
    cost about what the smaller GEMMs save)."""
    return F % 4 == 0 and 4 * Wo >= 3 * F


@functools.lru_cache(maxsize=64)
def _row_matrices(F, Wp, Wo, dtype_name):
    import numpy as np

    ns = (F + 1) // 2
    fold = folds(F, Wo)
    order = np.r_[0:ns:2, 1:ns:2] if fold else np.arange(ns)
    fwd_x, _ = dft_matrices(F, Wp, 0, dtype_name)
    fwd_g, inv = dft_matrices(F, Wo, Wo, dtype_name)
    fwdx = fwd_x[:, order].reshape(Wp, 2 * ns).T  # (2ns, Wp)
    if not fold:
        inv2 = inv.reshape(2 * ns, Wo).T  # (Wo, 2ns)
        fwd2 = fwd_g.reshape(Wo, 2 * ns).T  # (2ns, Wo)
        mats = (inv2, fwd2)
    else:
        H, even, odd = F // 2, order[: (ns + 1) // 2], order[(ns + 1) // 2 :]
        mats = (
            inv[even, :, :H].reshape(-1, H).T,  # (H, 2·even slots)
            inv[odd, :, :H].reshape(-1, H).T,
            fwd_g[:H, even].reshape(H, -1).T,  # (2·even slots, H)
            fwd_g[:H, odd].reshape(H, -1).T,
        )
    mats = tuple(np.ascontiguousarray(a) for a in (fwdx, *mats))
    return order, mats


_ON_NAMESPACE = {}


def on_namespace(kit, key, arrays, dtype=None):
    """``arrays`` (NumPy constants, identified by ``key``) on ``kit``'s
    namespace and device in ``dtype`` (default the kit's), converted once."""
    dtype = kit.dtype if dtype is None else dtype
    full = (key, kit.xp.__name__, str(kit.device), str(dtype))
    if full not in _ON_NAMESPACE:
        if len(_ON_NAMESPACE) > 64:
            _ON_NAMESPACE.clear()
        _ON_NAMESPACE[full] = tuple(kit.asarray(a, dtype) for a in arrays)
    return _ON_NAMESPACE[full]


class RowTransforms:
    """Image rows (``Wp`` samples) to slots, slots to map rows (``Wo``
    samples) and map rows to slots, for rows zero-padded to ``F``, on the
    namespace and device of ``kit`` (:class:`~calm_np._engines._kit.Kit`).

    ``order``: the slots in transform order (``slots[j]`` is slot
    ``order[j]``), a NumPy array.  Arrays hold rows along their first axis
    (the slots' re/im pairs as consecutive rows) and everything else along
    the second.
    """

    def __init__(self, F, Wp, Wo, kit):
        self.kit = kit
        self.F, self.Wo, self.fold = F, Wo, folds(F, Wo)
        from ._kit import np_name

        self.order, mats = _row_matrices(F, Wp, Wo, np_name(kit.dtype))
        mats = mats if kit.on_host else on_namespace(kit, ("rows", F, Wp, Wo), mats)
        self.fwdx, self.mats = mats[0], mats[1:]

    def images(self, rows, out):
        """Slots (2ns, N) of image rows given as (N, Wp)."""
        return self.kit.matmul(self.fwdx, self.kit.xp.matrix_transpose(rows), out)

    def inverse(self, E, out, buffers):
        """Map rows (Wo, N) from slots ``E`` (2ns, N), into ``out``."""
        kit = self.kit
        if not self.fold:
            return kit.matmul(self.mats[0], E, out=out)
        inv_even, inv_odd = self.mats[:2]
        H, ne = self.F // 2, inv_even.shape[1]
        r = self.Wo - H  # rows past the half
        kit.matmul(inv_even, E[:ne, ...], out=out[:H, ...])
        odd = kit.matmul(inv_odd, E[ne:, ...], out=buffers.get("odd", (H, E.shape[1])))
        kit.apply("subtract", out[:r, ...], odd[:r, ...], out=out[H:, ...])
        out[:H, ...] += odd
        return out

    def forward(self, A, out, buffers):
        """Slots (2ns, N) of map rows ``A`` (Wo, N), into ``out``; with the
        fold, ``A``'s first rows are overwritten (the butterfly's sums)."""
        kit = self.kit
        if not self.fold:
            return kit.matmul(self.mats[1], A, out=out)
        fwd_even, fwd_odd = self.mats[2:]
        H, ne = self.F // 2, fwd_even.shape[0]
        r = self.Wo - H
        odd = buffers.get("odd", (H, A.shape[1]))
        kit.apply("subtract", A[:r, ...], A[H:, ...], out=odd[:r, ...])
        odd[r:, ...] = A[r:H, ...]
        A[:r, ...] += A[H:, ...]
        kit.matmul(fwd_even, A[:H, ...], out=out[:ne, ...])
        kit.matmul(fwd_odd, odd, out=out[ne:, ...])
        return out
