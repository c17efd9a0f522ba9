"""Sparse kernels of the BatchTopK crosscoder: the encoder GEMM stays dense, everything after the selection works on
the selected entries only.

With k active latents per token out of L (k/L ≈ 1%), the four GEMMs after the encoder forward touch a code that is
~99% zeros. On the selected entries (a row-major sparse code of nnz = k·B entries):

- decode          x̂_b = Σ_j f_bj W_dec[j] + b_dec            ``embedding_bag`` (bags = rows, per-entry weights = f)
- dL/df           g_b · W_dec[j] at each selected (b, j)      ``torch.sparse.sampled_addmm`` (the sampled dense product)
- dL/dW_dec       W_dec[j] += Σ_b f_bj g_b                    ``embedding_bag`` over the code sorted by column
- dL/dW_enc       W_enc[:, j] += Σ_b dpre_bj x_b              the same, with the input rows
- dL/db_enc       Σ_b dpre_bj                                 ``index_add`` over the entries

Each costs O(nnz·D) instead of O(B·L·D). The auxiliary (dead-latent) loss shares the encoder: its per-row top-k_aux
entries are selected in the same forward (:func:`aux_select`) and their gradient joins the main one in one sparse
encoder backward. :func:`use_sparse` picks the path per step; the dense path (``kernels.py``) is the reference the
equivalence tests compare against.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from lm_diff.crosscoder.kernels import _affine, _gemm, _serial
from lm_diff.crosscoder.topk import _nonzero_sparse, topn_select

SPARSE_MAX_DENSITY = 0.05
"""Largest (main + aux) code density at which the CPU uses the sparse kernels. Measured on 2 CPU threads at
1024 × 4096 × 512: the sparse kernels cost ~0.6 µs per (entry · 512 columns) against ~0.04 µs per dense product
entry, so they win below ~7% density; 5% keeps a margin."""


def use_sparse(kernel: str, device: torch.device, gemm_dtype, density: float) -> bool:
    """Whether a step takes the sparse kernels: ``kernel`` ``sparse`` / ``dense`` force a path; ``auto`` takes the
    sparse one on the CPU in fp32 when the code density is at most :data:`SPARSE_MAX_DENSITY`. On CUDA ``auto`` stays
    dense: the sparse kernels have not been measured faster there."""
    if kernel == "sparse":
        return gemm_dtype is None
    if kernel == "dense":
        return False
    return device.type == "cpu" and gemm_dtype is None and density <= SPARSE_MAX_DENSITY


class Code:
    """The pattern of a row-major sparse code over [B, L]: ascending flat indices ``idx``, their ``rows`` / ``cols``,
    the row pointers ``crow`` [B+1], and (on first use) the column-sorted order for the column sums."""

    def __init__(self, idx: torch.Tensor, B: int, L: int):
        self.idx, self.B, self.L = idx, B, L
        self.rows, self.cols = idx // L, idx % L
        self.crow = torch.zeros(B + 1, dtype=torch.int64, device=idx.device)
        self.crow[1:] = torch.bincount(self.rows, minlength=B).cumsum(0)
        self._csc: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def csc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order, column pointers [L+1]): ``order`` sorts the entries by column, rows ascending within a column."""
        if self._csc is None:
            self._csc = col_order(self.cols, self.L)
        return self._csc

    def pattern(self, dtype: torch.dtype) -> torch.Tensor:
        """The pattern as a CSR tensor with zero values (for ``sampled_addmm``)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "sparse CSR support is in beta": the op used here is stable
            zeros = torch.zeros(self.idx.shape, dtype=dtype, device=self.idx.device)
            return torch.sparse_csr_tensor(self.crow, self.cols, zeros, (self.B, self.L), check_invariants=False)


def col_order(cols: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(cols, stable=True)
    ccol = torch.zeros(L + 1, dtype=torch.int64, device=cols.device)
    ccol[1:] = torch.bincount(cols, minlength=L).cumsum(0)
    return order, ccol


def row_sum(cols: torch.Tensor, crow: torch.Tensor, vals: torch.Tensor, W_LK: torch.Tensor) -> torch.Tensor:
    """out_BK[b] = Σ_{entries e of row b} vals_e · W_LK[cols_e] (rows given by the pointers ``crow``)."""
    return F.embedding_bag(cols, W_LK, crow[:-1], mode="sum", per_sample_weights=vals)


def col_sum(rows: torch.Tensor, order: torch.Tensor, ccol: torch.Tensor, vals: torch.Tensor,
            X_BK: torch.Tensor) -> torch.Tensor:
    """out_LK[j] = Σ_{entries e of column j} vals_e · X_BK[rows_e] (column order and pointers from :func:`col_order`)."""
    return F.embedding_bag(rows.index_select(0, order), X_BK, ccol[:-1], mode="sum",
                           per_sample_weights=vals.index_select(0, order))


class SparseDecode(torch.autograd.Function):
    """x̂ = f W + b for a sparse code f (values ``vals`` on ``code``); ``b`` may be None (the auxiliary decode)."""

    @staticmethod
    def forward(ctx, vals, W, b, code):
        with _gemm():
            out = row_sum(code.cols, code.crow, vals, W)
        if b is not None:
            out.add_(b)
        ctx.code = code
        ctx.save_for_backward(vals, W)
        return out

    @staticmethod
    def backward(ctx, g):
        vals, W = ctx.saved_tensors
        code = ctx.code
        grad_v = grad_W = grad_b = None
        g = g.contiguous()
        with _serial():
            pattern = code.pattern(g.dtype) if ctx.needs_input_grad[0] else None
            order, ccol = code.csc()
        with _gemm():
            if ctx.needs_input_grad[0]:
                grad_v = torch.sparse.sampled_addmm(pattern, g, W.t(), beta=0.0).values()
            if ctx.needs_input_grad[1]:
                grad_W = col_sum(code.rows, order, ccol, vals, g)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_v, grad_W, grad_b, None


class SparseTopKEncode(torch.autograd.Function):
    """pre = x W + b (dense GEMM), the BatchTopK selection, and (with ``k_aux`` > 0) the per-row top-k_aux of the dead
    latents. Outputs ``(vals, aux_vals)``: pre at the selected entries and relu(pre) at the auxiliary ones (both with
    gradient; ``info`` receives ``sel``, ``code``, ``aux_code``, ``thr``, ``topk_candidates`` and ``f_dense``, the
    code as a detached dense [B, L] tensor built in the memory of ``pre``, which is not kept). The backward is one
    sparse pass over both entry sets (all have pre > 0, so d vals / d pre = 1 there). ``scratch`` (a dict kept by
    the caller across steps) holds the auxiliary selection's B×L score buffer."""

    @staticmethod
    def forward(ctx, x, W, b, s, n, dist, info, dead_L, k_aux, scratch):
        B, L = x.shape[0], W.shape[1]
        with _gemm():
            pre = _affine(b, x, W, None)
        with _serial():
            thr, sel, n_cand = topn_select(pre, s, n, dist)
            code = Code(sel, B, L)
            vals = pre.view(-1).index_select(0, sel)
            aux_code, aux_vals = None, None
            if k_aux > 0 and dead_L is not None:
                buf = scratch.get("aux_scores")
                if buf is None or buf.shape != pre.shape or buf.device != pre.device:
                    buf = scratch["aux_scores"] = torch.empty_like(pre)
                aux_code = Code(aux_select(pre, s, dead_L, k_aux, buf), B, L)
                aux_vals = pre.view(-1).index_select(0, aux_code.idx)
            f = pre.zero_()
            f.view(-1).index_copy_(0, sel, vals)
        info.update(thr=thr, topk_candidates=n_cand, sel=sel, code=code, aux_code=aux_code, f_dense=f)
        ctx.code, ctx.aux_code = code, aux_code
        ctx.save_for_backward(x, W)
        ctx.set_materialize_grads(False)
        return vals, aux_vals

    @staticmethod
    def backward(ctx, grad_vals, grad_aux):
        x, W = ctx.saved_tensors
        code, aux = ctx.code, ctx.aux_code
        L = W.shape[1]
        parts = [(code, grad_vals)] + ([(aux, grad_aux)] if aux is not None else [])
        parts = [(c, g) for c, g in parts if g is not None]
        none = (None,) * 7
        if not parts:
            return (None, None, None) + none
        with _serial():
            if len(parts) == 1:
                c, d = parts[0]
                rows, cols, crow, (order, ccol) = c.rows, c.cols, c.crow, c.csc()
            else:
                rows = torch.cat([c.rows for c, _ in parts])
                cols = torch.cat([c.cols for c, _ in parts])
                d = torch.cat([g for _, g in parts])
                order, ccol = col_order(cols, L)
                crow = None
            grad_b = d.new_zeros(L).index_add_(0, cols, d) if ctx.needs_input_grad[2] else None
            if ctx.needs_input_grad[0] and crow is None:   # row order of the union: sort by row
                r_order, crow = col_order(rows, x.shape[0])
                cols, d = cols.index_select(0, r_order), d.index_select(0, r_order)
        grad_W = grad_x = None
        with _gemm():
            if ctx.needs_input_grad[1]:
                grad_W_LK = col_sum(rows, order, ccol, d, x)
            if ctx.needs_input_grad[0]:
                grad_x = row_sum(cols, crow, d, W.t().contiguous())
        if ctx.needs_input_grad[1]:
            with _serial():
                grad_W = grad_W_LK.t().contiguous()   # the parameter's [K, L] layout
        return (grad_x, grad_W, grad_b) + none


def aux_select(pre_BL: torch.Tensor, s_L: torch.Tensor, dead_L: torch.Tensor, k_aux: int,
               out_BL: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row, the top-``k_aux`` dead latents by relu(pre)·s (ties broken arbitrarily), among those with a positive
    score: ascending flat indices into [B, L].

    Two-stage, like :func:`topn_select`: a per-row lower bound t_b from a strided sample of the row's scores (rank with
    a ~4σ margin), the candidates {score ≥ t_b} by one comparison pass, then an exact top-k_aux over each row's ~1.5·k_aux
    candidates. A row whose sample overestimated (fewer than k_aux candidates above a positive bound) sends the whole
    selection to the full per-row top-k: the result never depends on the sample, only the speed. ``out_BL``: a buffer
    for the scores (overwritten).
    """
    with torch.no_grad():
        B, L = pre_BL.shape
        sc = torch.clamp_min(pre_BL, 0.0, out=out_BL).mul_(s_L * dead_L.to(s_L.dtype))
        stride = 8 if L >= 512 else 1
        r_s = -(-L // stride)
        mu = k_aux * r_s / L
        rank = int(math.ceil(mu + 4.0 * math.sqrt(mu) + 4))
        tiny = torch.nextafter(sc.new_zeros(()), sc.new_ones(()))   # score ≥ tiny ⇔ score > 0
        if stride > 1 and rank < r_s:
            t_B = sc[:, ::stride].topk(rank, dim=1, sorted=False).values.min(1).values.clamp_min(tiny)
            idx = _nonzero_sparse((sc >= t_B[:, None]).reshape(-1))
            rows = idx // L
            count_B = torch.bincount(rows, minlength=B)
            if not bool(((count_B < k_aux) & (t_B > tiny)).any()):
                return _top_per_row(sc.view(-1).index_select(0, idx), idx, rows, count_B, k_aux)
        top = sc.topk(min(k_aux, L), dim=1, sorted=False)
        keep = top.values.reshape(-1) > 0
        idx = (top.indices + torch.arange(B, device=sc.device)[:, None] * L).reshape(-1)[keep]
        return idx.sort().values


def _top_per_row(vals: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, count_B: torch.Tensor,
                 k: int) -> torch.Tensor:
    """Top-``k`` of each row's candidates (``vals`` at ascending flat ``idx``, rows ``rows``): ascending flat indices."""
    B = count_B.numel()
    width = int(count_B.max()) if count_B.numel() else 0
    if width == 0:
        return idx
    start_B = torch.zeros(B, dtype=torch.int64, device=idx.device)
    start_B[1:] = count_B.cumsum(0)[:-1]
    pos = torch.arange(idx.numel(), device=idx.device) - start_B.index_select(0, rows)
    P = vals.new_full((B, width), -1.0)
    P[rows, pos] = vals
    kk = min(k, width)
    chosen = P.topk(kk, dim=1, sorted=False).indices.sort(dim=1).values   # candidate positions, ascending per row
    valid = chosen < count_B[:, None]
    flat = (start_B[:, None] + chosen)[valid]
    return idx.index_select(0, flat)
