"""The chunked plans: one fast implementation of each engine, for every namespace.

A plan (:class:`Im2colPlan`, :class:`RowDFTPlan`) is built for a batch's
shapes, a ``latent`` and a ``margin`` on a :class:`~._kit.Kit` (the
namespace, device and dtype of the pass); it has ``chunk_size``,
``prepare(M, bias)`` (kernel-side work, once per pass),
``new_accumulator()``, ``chunk(Xc, prepared, acc)`` (the E- and M-step of a
few images, returning their log normalisers: one per image, or one per
position for ``latent="patch"``) and ``finish(accs)``; for readouts,
``readout_maps(Xc, prepared, scratch, by_position)`` (the log joint as (m,
k, Ho, Wo) in the layout that pools fastest).  The latent only changes the
softmax between the steps (over ``(k, u)`` per image, or over ``k`` per
position); a margin only widens the M-step's windows (a second patch
matrix, or row spectra of images padded by the margin).

One EM pass over a batch is E-step GEMM -> softmax -> M-step GEMM.  Done on
whole-batch arrays it streams the (n, k, Ho, Wo) maps through memory about
eight times; here each chunk of a few images (sized for the cache, or for
the device: ``Kit.chunk_images``) keeps its maps from the E-step to the
M-step and adds its share of the statistics to an accumulator, whatever
the caller's batch size.  Three tricks keep passes few:

* the normalisers go to the image side of the M-step GEMM where it is the
  smaller operand, not to the maps: 1/Z_n to the row-DFT plan's Toeplitz
  matrix; 1/Z_n, or 1/Z_u per position for the patch latent, to the im2col
  plan's patches when they hold fewer values per position than there are
  kernels;
* the bias −½‖μ_k‖² + log π_k is added to the DC coefficient before the
  inverse transform (row-DFT plan) instead of to every map entry;
* the posterior mass of each map row (for ``N_k`` and ``Z_n``) is the DC
  coefficient of the forward transform the M-step needs anyway (row-DFT
  plan), not another sum over the maps.

Probabilities are flushed to 0 or at least tiny/eps (1e-31 in float32)
before the M-step GEMM (``(p + T) − T``, :meth:`._kit.Kit.exp_flushed`):
subnormal operands make a CPU GEMM ~3× slower (up to 100× on peaked
posteriors), and each probability moves by at most 1e-31 or a unit in its
last place.

``method="fft"`` is the row-DFT plan, a Fourier method that is not a 2-D
FFT: it transforms along image *rows* only (length F = Wp, as real GEMMs
with a DFT matrix, :mod:`._dft`) and sums over kernel rows directly: per
frequency, one GEMM of the kernels' row spectra with a Toeplitz matrix of
the images' row spectra.  For the MNIST setup this is ~3× fewer flops than
im2col, for STL-10's ~5×, all of them in GEMMs: the work a GPU does best,
and the one path every namespace shares (no FFT extension needed).
"""

from __future__ import annotations

import math

from .._whiten import column_sq_norms, whiten_in_place
from ._dft import RowTransforms, dft_matrices, on_namespace
from ._kit import np_name as _np_name


def _softmax_inplace(A3, kit):
    """``A3`` (rows, m, cols) of log joints -> exp(A - max_n), in place.

    Returns the per-image max (m,), finite.  Probabilities near 0 are
    flushed (:meth:`~._kit.Kit.exp_flushed`).
    """
    xp = kit.xp
    if A3.shape[1] == 1:
        mx = xp.reshape(xp.max(A3), (1,))  # contiguous: fastest
    else:
        mx = xp.max(xp.max(A3, axis=0), axis=-1)
    mx = xp.where(xp.isfinite(mx), mx, xp.zeros_like(mx))
    A3 -= mx[None, :, None]
    kit.exp_flushed(A3)
    return mx


def _softmax_over_kernels(maps, axis, kit):
    """``maps`` (…, k, …) of log joints -> ``exp(A − max)`` over ``axis``, in
    place; the ``latent="patch"`` softmax per position, not yet normalised.

    Returns the log normalisers (``maps`` without ``axis``) and ``1/Z``
    (keepdims): the caller divides the maps by ``Z``, or the other operand
    of its M-step.  Probabilities (relative to a position's largest) near 0
    are flushed (:meth:`~._kit.Kit.exp_flushed`).
    """
    xp = kit.xp
    mx = xp.max(maps, axis=axis, keepdims=True)
    mx = xp.where(xp.isfinite(mx), mx, xp.zeros_like(mx))
    maps -= mx
    kit.exp_flushed(maps)
    Z = xp.sum(maps, axis=axis, keepdims=True)  # >= 1: the largest is exp(0)
    return xp.squeeze(mx + xp.log(Z), axis=axis), 1.0 / Z


def _normalise(sk, xp):
    """Per-image ``1/Z`` (0 where ``Z = 0``) and ``log Z`` (``-inf`` there)
    from the map sums ``sk`` (k, m)."""
    Z = xp.sum(sk, axis=0)
    positive = Z > 0
    safe = xp.where(positive, Z, xp.ones_like(Z))
    inv = xp.where(positive, 1.0 / safe, xp.zeros_like(Z))
    log_Z = xp.where(positive, xp.log(safe), xp.full_like(Z, -math.inf))
    return inv, log_Z


def _per_image(values, L, xp):
    """``values`` (m,) repeated over each image's ``L`` columns: (m·L,)."""
    m = values.shape[0]
    return xp.reshape(xp.broadcast_to(values[:, None], (m, L)), (m * L,))


class Im2colPlan:
    """Fused im2col: per chunk, patches (D, m·L); two GEMMs around a softmax.

    With a margin the M-step multiplies a second patch matrix, of the
    images padded by ``margin`` and windows ``2·margin`` larger.  A
    ``whitening`` (on the kit's namespace) whitens each chunk's patches.
    """

    def __init__(self, kit, image_shape, kernel_shape, latent="image", margin=0,
                 whitening=None):  # fmt: skip
        _, c, Hp, Wp = image_shape
        k, _, kh, kw = kernel_shape
        self.kit, self.whitening = kit, whitening
        self.c, self.k, self.kh, self.kw = c, k, kh, kw
        self.latent, self.margin = latent, margin
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.D, self.L = c * kh * kw, self.Ho * self.Wo
        self.window = (kh + 2 * margin, kw + 2 * margin)
        self.Dm = c * math.prod(self.window)  # the M-step's patch length
        # ~4 MB of patches and maps per chunk keeps a chunk's work in cache
        per_image = self.L * (self.D + k + (self.Dm if margin else 0)) * 4
        self.chunk_size = kit.chunk_images(per_image, 4 << 20)

    def prepare(self, M, bias):
        return self.kit.xp.reshape(M, (self.k, self.D)), bias

    def new_accumulator(self):
        kit = self.kit
        return {
            "counts": kit.zeros((self.k,), kit.wide),
            "sums": kit.zeros((self.k, self.Dm), kit.wide),
            "scratch": kit.scratch(),
        }

    def patches(self, Xc, window, scratch, name):
        """``(c·wh·ww, m·L)`` patch matrix of a chunk, in reused scratch."""
        m = Xc.shape[0]
        P = scratch.get(name, (self.c, *window, m, self.Ho, self.Wo))
        self.kit.patches(Xc, window, P)
        return self.kit.xp.reshape(P, (-1, m * self.L))

    def whitened(self, Xc, scratch):
        """The chunk's ``(D, m·L)`` patch matrix, whitened if the plan whitens."""
        P = self.patches(Xc, (self.kh, self.kw), scratch, "P")
        if self.whitening is None:
            return P
        return whiten_in_place(P, self.whitening, scratch.get("Z", P.shape), self.kit)

    def e_step(self, Xc, prepared, scratch):
        """Log joint ``(k, m·L)`` of a chunk, and its patch matrix."""
        Mf, bias = prepared
        P = self.whitened(Xc, scratch)
        A = self.kit.matmul(Mf, P, out=scratch.get("A", (self.k, P.shape[1])))
        A += bias[:, None]
        return A, P

    def readout_maps(self, Xc, prepared, scratch, by_position=False):
        """Log joint of a chunk as (m, k, Ho, Wo): a view of (m, Ho, Wo, k)
        with ``by_position`` (the GEMM's operands swapped, the same values:
        every pooling box is a run of long contiguous rows), else of the
        E-step's own (k, m, Ho, Wo)."""
        xp, m = self.kit.xp, Xc.shape[0]
        if not by_position:
            A = self.e_step(Xc, prepared, scratch)[0]
            A = xp.reshape(A, (self.k, m, self.Ho, self.Wo))
            return xp.permute_dims(A, (1, 0, 2, 3))
        Mf, bias = prepared
        P = self.whitened(Xc, scratch)
        out = scratch.get("A", (m * self.L, self.k))
        A = self.kit.matmul(xp.matrix_transpose(P), xp.matrix_transpose(Mf), out=out)
        A += bias
        A = xp.reshape(A, (m, self.Ho, self.Wo, self.k))
        return xp.permute_dims(A, (0, 3, 1, 2))

    def chunk(self, Xc, prepared, acc):
        kit = self.kit
        xp, scratch = kit.xp, acc["scratch"]
        m = Xc.shape[0]
        L, k, q = self.L, self.k, self.margin
        A, P = self.e_step(Xc, prepared, scratch)
        if self.whitening is not None:  # ‖z_u‖², kept for the objective
            acc["sq_norms"] = column_sq_norms(P, kit)
        A3 = xp.reshape(A, (k, m, L))
        if q:
            from .._xp import pad_zeros

            Xq = pad_zeros(Xc, (q, q), xp)
            P = self.patches(Xq, self.window, scratch, "P_wide")
        # the normalisers 1/Z go to the smaller operand of the M-step GEMM:
        # the patches (Dm values per position) or the maps (k per position)
        patch_side = P.shape[0] < k
        if self.latent == "patch":
            log_norm, inv = _softmax_over_kernels(A3, 0, kit)  # (m, L), 1/Z_u
            inv = xp.reshape(inv, (1, m * L))
            if patch_side:  # N_k = Σ_u e_ku / Z_u, one GEMV
                acc["counts"] += xp.matmul(A, inv[0, :])
                P *= inv
            else:
                A *= inv
                acc["counts"] += xp.sum(A, axis=1)
        else:
            mx = _softmax_inplace(A3, kit)
            sk = xp.sum(A3, axis=-1)  # (k, m)
            inv, log_Z = _normalise(sk, xp)
            acc["counts"] += xp.sum(sk * inv, axis=1, dtype=kit.wide)
            side = P if patch_side else A
            side *= _per_image(inv, L, xp)[None, :]
            log_norm = mx + log_Z
        part = scratch.get("part", (k, P.shape[0]))
        acc["sums"] += kit.matmul(A, xp.matrix_transpose(P), out=part)  # (k, Dm)
        return log_norm

    def finish(self, accs):
        counts = sum(a["counts"] for a in accs[1:]) + accs[0]["counts"]
        sums = sum(a["sums"] for a in accs[1:]) + accs[0]["sums"]
        sums = self.kit.xp.reshape(sums, (self.k, self.c, *self.window))
        return counts, sums


_FLUSH_IMAGES = 32  # images per wide flush of the row-DFT plan's M-step


class RowDFTPlan:
    """Fused row-DFT correlation, ``method="fft"`` (see the module docstring).

    With ``X̂[n,c,r,f]`` the DFT of image row ``r`` and ``M̂[k,c,i,f]`` that of
    kernel row ``i`` (length ``F = Wp``; ``ns`` slots of bins in transform
    order, see :mod:`._dft`)::

        Â[n,k,y,f] = Σ_{c,i} X̂[n,c,y+i,f] · conj(M̂[k,c,i,f])      E-step
        Ŝ[k,c,i,f] = Σ_{n,y} conj(Γ̂[n,k,y,f]) · X̂[n,c,y+i,f]      M-step

    per bin ``f`` two real GEMMs (re/im stacked) against the Toeplitz matrix
    ``T_f[(ri,c,i), (n,y)]``; rows come back to space by GEMMs with the
    (cropped) inverse DFT matrix (radix-2 folded for long rows,
    :class:`~._dft.RowTransforms`).  No wrap-around: ``x + j <= Wp - 1 < F``.
    The M-step's products add up in the plan's dtype for ``_FLUSH_IMAGES``
    images, then into the wide accumulator, which goes back to space by one
    more GEMM with the inverse DFT matrix (:meth:`finish`).

    With a margin ``q`` the images are padded by ``q`` more (rows of length
    ``F = Wp + 2q``) and the M-step sums ``kh + 2q`` rows of ``kw + 2q``
    samples; the E-step sees the kernel shifted by ``q`` rows and columns
    (zero rows around it, ``q`` zeros before each row), so both steps share
    one Toeplitz matrix.
    """

    def __init__(self, kit, image_shape, kernel_shape, latent="image", margin=0,
                 whitening=None):  # fmt: skip
        if whitening is not None:
            raise ValueError(
                "method='fft' cannot whiten patches; use method='im2col' or 'auto'"
            )
        _, c, Hp, Wp = image_shape
        k, _, kh, kw = kernel_shape
        q = margin
        self.kit = kit
        self.c, self.k, self.kh, self.kw = c, k, kh, kw
        self.latent, self.margin = latent, margin
        self.Hp, self.Wp = Hp + 2 * q, Wp + 2 * q  # the images as transformed
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.rows, self.cols = kh + 2 * q, kw + 2 * q  # the M-step's window
        self.F = self.Wp
        self.ns = (self.F + 1) // 2
        self.rowt = RowTransforms(self.F, self.Wp, self.Wo, kit)
        # the maps and their row spectra: ~(Wo + 2ns)·k·Ho floats per image
        per_image = (self.Wo + 2 * self.ns) * k * self.Ho * 4
        self.chunk_size = kit.chunk_images(per_image, 6 << 20)

    def prepare(self, M, bias):
        kit = self.kit
        xp = kit.xp
        ns, F, k, c, kh, q = self.ns, self.F, self.k, self.c, self.rows, self.margin
        if q:  # the kernel at offset (q, q) of its (kh + 2q) × (kw + q) window
            Mq = kit.zeros((k, c, kh, self.kw + q), M.dtype)
            Mq[:, :, q : kh - q, q:] = M
            M = Mq
        fwd_k = _kernel_dft(kit, F, M.shape[3], tuple(self.rowt.order))
        M_f = xp.tensordot(M, fwd_k, axes=([3], [0]))  # (k, c, kh, ns, 2)
        ckh = c * kh
        Mr = xp.permute_dims(xp.reshape(M_f[..., 0], (k, ckh, ns)), (2, 0, 1))
        Mi = xp.permute_dims(xp.reshape(M_f[..., 1], (k, ckh, ns)), (2, 0, 1))
        # conj(M̂)·X̂: re = Mr·Tr + Mi·Ti, im = Mr·Ti − Mi·Tr
        Mblk = xp.empty((ns, 2 * k, 2 * ckh), dtype=kit.dtype, device=kit.device)
        Mblk[:, :k, :ckh] = Mr
        Mblk[:, :k, ckh:] = Mi
        Mblk[:, k:, :ckh] = -Mi
        Mblk[:, k:, ckh:] = Mr
        # slot 0 holds two real bins (DC, Nyquist): a diagonal block
        Mblk[0, :k, ckh:] = 0
        Mblk[0, k:, :ckh] = 0
        Mblk[0, k:, ckh:] = Mi[0, ...]  # (slot 0 stays first in transform order)
        finite = xp.isfinite(bias)
        # dead kernels (log π = -inf) are masked after the inverse transform;
        # on the host the mask is skipped when there are none (no sync there)
        alive = None if kit.on_host and bool(xp.all(finite)) else finite
        # bias on the DC coefficient: the inverse DFT spreads it as 1/F · F
        dc = xp.where(finite, bias, xp.zeros_like(bias)) * F
        return Mblk, dc, alive

    def new_accumulator(self):
        kit = self.kit
        ns, k, ckh = self.ns, self.k, self.c * self.rows
        # products add up in the plan's dtype over a few chunks ("block"),
        # then into the wide sums: a mixed-dtype add per chunk cost ~10 %
        return {
            "counts": kit.zeros((k,), kit.wide),
            "sums": kit.zeros((ns, 2 * k, 2 * ckh), kit.wide),
            "block": kit.zeros((ns, 2 * k, 2 * ckh)),
            "pending": 0,  # images in "block"
            "scratch": kit.scratch(),
        }

    def e_step(self, Xc, prepared, scratch):
        """Log joint ``(Wo, k·m·Ho)`` of a chunk, with the Toeplitz matrix and
        the products' buffer (the M-step reuses both)."""
        kit = self.kit
        xp = kit.xp
        Mblk, dc, alive = prepared
        m, q = Xc.shape[0], self.margin
        ns, k, c, kh, Ho, Wo = self.ns, self.k, self.c, self.rows, self.Ho, self.Wo
        n_col = m * Ho
        if q:
            from .._xp import pad_zeros

            Xc = pad_zeros(Xc, (q, q), xp)
        # row spectra (2ns, m, c, Hp) -> Toeplitz (ns, 2·c·kh, m·Ho)
        rows = xp.reshape(Xc, (-1, self.Wp))
        X_f = self.rowt.images(rows, scratch.get("X_f", (2 * ns, rows.shape[0])))
        X_f = xp.permute_dims(xp.reshape(X_f, (2 * ns, m, c, self.Hp)), (0, 2, 1, 3))
        T = scratch.get("T", (2 * ns, c, kh, m, Ho))
        kit.windows(X_f, 3, kh, 2, T)  # (2ns, c, kh, m, Ho)
        T = xp.reshape(T, (ns, 2 * c * kh, n_col))
        E = kit.stacked_matmul(Mblk, T, out=scratch.get("E", (ns, 2 * k, n_col)))
        E[0, :k, :] += dc[:, None]
        A = self.rowt.inverse(
            xp.reshape(E, (2 * ns, k * n_col)),
            scratch.get("A", (Wo, k * n_col)),
            scratch,
        )
        if alive is not None:
            A3 = xp.reshape(A, (Wo, k, n_col))
            dead = xp.full_like(A3[:1, ...], -math.inf)
            A3[...] = xp.where(alive[None, :, None], A3, dead)
        return A, (T, E)

    def readout_maps(self, Xc, prepared, scratch, by_position=False):
        """The chunk's log joint as (m, k, Ho, Wo), copied: in the plan's
        layout (Wo, k, m, Ho) the positions are short strided runs, which
        slows every reduction of a readout."""
        xp = self.kit.xp
        A, _ = self.e_step(Xc, prepared, scratch)
        m, Ho, Wo = Xc.shape[0], self.Ho, self.Wo
        out = scratch.get("maps", (m, self.k, Ho, Wo))
        out[...] = xp.permute_dims(xp.reshape(A, (Wo, self.k, m, Ho)), (2, 1, 3, 0))
        return out

    def chunk(self, Xc, prepared, acc):
        kit = self.kit
        xp, scratch = kit.xp, acc["scratch"]
        m = Xc.shape[0]
        ns, k, Ho, Wo = self.ns, self.k, self.Ho, self.Wo
        n_col = m * Ho
        A, (T, E) = self.e_step(Xc, prepared, scratch)
        if self.latent == "patch":
            A3 = xp.reshape(A, (Wo, k, n_col))
            log_norm, inv = _softmax_over_kernels(A3, 1, kit)
            A3 *= inv  # (the M-step runs on row spectra: no patch side)
            log_norm = xp.permute_dims(xp.reshape(log_norm, (Wo, m, Ho)), (1, 2, 0))
        else:
            mx = _softmax_inplace(xp.reshape(A, (Wo * k, m, Ho)), kit)
        # row spectra of the maps (reusing E's memory); slot 0's real row is
        # each map row's DC, its sum over x: the posterior mass per (k, n, y)
        # without another pass over the maps
        G = self.rowt.forward(A, xp.reshape(E, (2 * ns, k * n_col)), scratch)
        G = xp.reshape(G, (ns, 2 * k, n_col))
        mass = G[0, :k, :]  # (k, m·Ho)
        if self.latent == "patch":
            acc["counts"] += xp.sum(mass, axis=1)
        else:
            sk = xp.sum(xp.reshape(mass, (k, m, Ho)), axis=-1)  # (k, m)
            inv, log_Z = _normalise(sk, xp)
            acc["counts"] += xp.sum(sk * inv, axis=1, dtype=kit.wide)
            # the image side scaled by 1/Z_n, not the maps
            T *= _per_image(inv, Ho, xp)[None, None, :]
            log_norm = mx + log_Z
        block = acc["block"]  # (ns, 2k, 2ckh)
        Tt = xp.permute_dims(T, (0, 2, 1))
        if acc["pending"]:
            part = scratch.get("part", block.shape)
            block += kit.stacked_matmul(G, Tt, out=part)
        else:
            kit.stacked_matmul(G, Tt, out=block)
        acc["pending"] += m
        if acc["pending"] >= _FLUSH_IMAGES:
            acc["sums"] += block
            acc["pending"] = 0
        return log_norm

    def finish(self, accs):
        """``N_k`` and ``S_k`` in the wide dtype: the slots' products (in
        transform order) back to the kernel window's columns by one GEMM
        with the inverse DFT matrix, in place of an inverse real FFT."""
        kit = self.kit
        xp = kit.xp
        ns, k, c, kh, kw = self.ns, self.k, self.c, self.rows, self.cols
        P = None
        for a in accs:
            part = a["sums"] + a["block"] if a["pending"] else a["sums"]
            P = part if P is None else P + part
        P = xp.reshape(P, (ns, 2, k, 2, c * kh))
        # conj(Γ̂)·X̂ = (Gr·Tr + Gi·Ti) + i(Gr·Ti − Gi·Tr), per slot; slot 0
        # holds the two real bins: DC (real times real) and Nyquist
        re = P[:, 0, :, 0, :] + P[:, 1, :, 1, :]
        im = P[:, 0, :, 1, :] - P[:, 1, :, 0, :]
        re[0, ...] = P[0, 0, :, 0, :]
        im[0, ...] = P[0, 1, :, 1, :]
        S_slots = xp.stack([re, im], axis=1)  # (ns, 2, k, c·kh)
        inv = _inverse_dft(kit, self.F, kw, tuple(self.rowt.order))  # (ns, 2, kw)
        S = xp.tensordot(S_slots, inv, axes=([0, 1], [0, 1]))  # (k, c·kh, kw)
        counts = accs[0]["counts"]
        for a in accs[1:]:
            counts = counts + a["counts"]
        return counts, xp.reshape(S, (k, c, kh, kw))


def _kernel_dft(kit, F, n_in, order):
    """``(n_in, ns, 2)`` forward DFT matrix for kernel rows, slots in
    ``order``, on the kit's namespace in its dtype."""
    fwd, _ = dft_matrices(F, n_in, 0, "float64")
    fwd = fwd[:, list(order)].astype(_np_name(kit.dtype))
    key = ("kernel", F, n_in, order)
    return fwd if kit.on_host else on_namespace(kit, key, (fwd,))[0]


def _inverse_dft(kit, F, n_out, order):
    """``(ns, 2, n_out)`` inverse DFT matrix (slots in ``order``) in the
    kit's wide dtype: slot sums -> the first ``n_out`` samples."""
    _, inv = dft_matrices(F, 0, n_out, "float64")
    inv = inv[list(order)].astype(_np_name(kit.wide))
    key = ("inverse", F, n_out, order)
    return inv if kit.on_host else on_namespace(kit, key, (inv,), kit.wide)[0]


PLANS = {"im2col": Im2colPlan, "fft": RowDFTPlan}
