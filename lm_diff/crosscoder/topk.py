"""BatchTopK selection: the exact top-n of relu(pre)·s over the (global) batch, without forming the B×L score tensor."""

from __future__ import annotations

import math
from typing import Optional

import torch

from lm_diff.crosscoder.dist import LOCAL, DistCtx

# BatchTopK selection


def batch_topk_threshold(
    scores_BL: torch.Tensor, n: int, row_budget: Optional[int] = None, dist: DistCtx = LOCAL, grow: bool = True
) -> tuple[torch.Tensor, int]:
    """Value of the n-th largest entry of ``scores_BL`` (over all ranks' rows when ``dist`` is enabled).

    Two-stage: per-row top-r, then a global top-n over the candidates. Exact (up to ties) unless some row's r-th
    candidate is above the resulting threshold, in which case that row may hold more than r winners and the full
    flat top-k is taken; with ``grow`` the per-row budget is first quadrupled while it is ≤ L/2. Returns
    ``(threshold, r)`` with r the per-row budget that gave an exact answer, 0 when the flat top-k was used.
    """
    B, L = scores_BL.shape
    n_global = n
    r = row_budget if row_budget is not None else L
    r = max(1, min(L, r))
    while r <= L // 2 and r * B * dist.world >= n_global:
        cand_BR = scores_BL.topk(r, dim=1, sorted=False).values
        flat = cand_BR.reshape(-1)
        local = flat.topk(min(n_global, flat.numel()), sorted=False).values
        pool = dist.cat(_pad_to(local, n_global))
        thr = pool.topk(n_global, sorted=False).values.min()
        overflow = (cand_BR.min(dim=1).values > thr).any().to(torch.int32).reshape(1)
        if not bool(dist.max_(overflow).item()):
            return thr, r
        if not grow:
            break
        r *= 4   # a row held more winners than its budget: retry with a larger budget, then fall back
    flat = scores_BL.reshape(-1)
    local = flat.topk(min(n_global, flat.numel()), sorted=False).values
    pool = dist.cat(_pad_to(local, n_global))
    return pool.topk(n_global, sorted=False).values.min(), 0


def _pad_to(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.numel() >= n:
        return t
    return torch.cat([t, t.new_full((n - t.numel(),), -math.inf)])


# Exact BatchTopK selection for training: a sampled lower bound, then an exact top-n over the survivors.
#
# 1. t_lo = a high-side quantile of a strided sample of z·s (stride coprime with L, ≤ 32k sampled values, so no
#    B×L intermediate); its rank leaves a ~4σ margin above the expected number of sampled winners.
# 2. Survivors {z·s ≥ t_lo} are found with one comparison of ``pre`` against per-latent thresholds c_j, the exact
#    smallest float with fl(c_j·s_j) ≥ t_lo (rounded multiplication is monotone, so pre ≥ c_j ⇔ fl(pre·s_j) ≥ t_lo);
#    the B×L score tensor is never formed.
# 3. If at least n entries survive (over all ranks), the n-th largest survivor score *is* the n-th largest score:
#    an exact top-n over the ~1.3·n survivors gives the threshold. Otherwise t_lo is lowered (larger sample rank), and
#    after that the flat top-k over all scores is used. The outcome never depends on the sample, only the speed.

_SAMPLE_MAX = 32768      # sampled values (one parallel-free chunk on CPU)
_FAST_MIN_ELEMS = 4096   # below this many local scores the flat top-k is as fast


def _sample_stride(N: int, L: int) -> int:
    stride = max(1, -(-N // _SAMPLE_MAX))
    if stride == 1:
        return 1
    stride |= 1
    while math.gcd(stride, L) != 1:   # coprime with L: the sample walks through every latent column
        stride += 2
    return stride


def _col_thresholds(t: torch.Tensor, s_L: torch.Tensor) -> Optional[torch.Tensor]:
    """c_L with ``pre ≥ c_j ⇔ fl(pre·s_j) ≥ t`` for every float pre (t > 0, s_j ≥ 0); None if it cannot be verified."""
    with torch.no_grad():
        pos = s_L > 0
        s = torch.where(pos, s_L, 1.0)
        c = t / s
        down, up = c.new_tensor(-math.inf), c.new_tensor(math.inf)
        for _ in range(3):
            lower = torch.nextafter(c, down)
            c = torch.where(lower * s >= t, lower, c)
        for _ in range(3):
            c = torch.where(c * s < t, torch.nextafter(c, up), c)
        ok = (c * s >= t) & (torch.nextafter(c, down) * s < t)
        if not bool((ok | ~pos).all()):
            return None
        return torch.where(pos, c, math.inf)   # s_j = 0: the score is 0 < t for every finite pre


def _flat_select(pre_BL: torch.Tensor, s_L: torch.Tensor, n: int, dist: DistCtx) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: the n-th largest of relu(pre)·s over all ranks by a flat top-k, and this rank's selected flat
    indices (score ≥ threshold; every positive z when the threshold is 0)."""
    scores = torch.relu(pre_BL) * s_L
    flat = scores.reshape(-1)
    local = flat.topk(min(n, flat.numel()), sorted=False).values
    thr = dist.cat(_pad_to(local, n)).topk(n, sorted=False).values.min()
    keep = flat >= thr if float(thr) > 0 else pre_BL.reshape(-1) > 0
    return thr, keep.nonzero().reshape(-1)


def _nonzero_sparse(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the True entries of a sparse 1-d bool tensor: ``nonzero`` over its 8-byte words, then
    over the bytes of the few non-zero words (several times faster than ``mask.nonzero()`` at ~1% density)."""
    if mask.numel() % 8 or not mask.is_contiguous() or mask.storage_offset() % 8:
        return mask.nonzero().reshape(-1)
    words = mask.view(torch.int64).nonzero().reshape(-1)
    cand = (words[:, None] * 8 + torch.arange(8, device=mask.device)).reshape(-1)
    return cand[mask.index_select(0, cand)]


def topn_select(
    pre_BL: torch.Tensor, s_L: torch.Tensor, n: int, dist: DistCtx = LOCAL, force_flat: bool = False
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact BatchTopK selection on scores relu(pre)·s (s ≥ 0), over all ranks' rows.

    Returns ``(thr, sel, n_cand)``: ``thr`` the n-th largest score (a 0-d tensor; the same value as
    ``torch.topk(scores.flatten(), n).values.min()`` on the global batch), ``sel`` this rank's selected entries as
    ascending flat indices into ``pre_BL`` (score ≥ thr; all positive entries when thr = 0), and ``n_cand`` the global
    number of candidates the exact top-n ran over (0 = flat top-k over every score).
    """
    with torch.no_grad():
        B, L = pre_BL.shape
        N, N_tot = B * L, B * L * dist.world
        pre = pre_BL.contiguous()
        flat = pre.reshape(-1)
        if force_flat or N < _FAST_MIN_ELEMS or 8 * n > N_tot:
            thr, sel = _flat_select(pre, s_L, n, dist)
            return thr, sel, 0
        stride = _sample_stride(N, L)
        cols = torch.arange(0, N, stride, device=pre.device) % L
        sample = dist.cat(flat[::stride] * s_L[cols])
        S = sample.numel()
        mu = n * S / N_tot   # expected number of sampled winners
        rank = int(math.ceil(mu + 4.0 * math.sqrt(mu) + 8))
        for _ in range(3):
            if rank > S:
                break
            t_lo = sample.topk(rank, sorted=False).values.min()
            if not float(t_lo) > 0:
                break
            c_L = _col_thresholds(t_lo, s_L)
            if c_L is None:
                break
            idx = _nonzero_sparse((pre >= c_L).reshape(-1))
            count = idx.numel()
            total = int(dist.sum_(torch.tensor([count], dtype=torch.int64, device=pre.device))[0]) if dist.enabled else count
            if total < n:   # the sample overestimated the threshold: lower it
                rank *= 4
                continue
            vals = flat[idx] * s_L[idx % L]
            if dist.enabled:
                width = int(dist.max_(torch.tensor([count], dtype=torch.int64, device=pre.device))[0])
                pool = dist.cat(_pad_to(vals, width))
            else:
                pool = vals
            thr = pool.topk(n, sorted=False).values.min()
            return thr, idx[vals >= thr], total
        thr, sel = _flat_select(pre, s_L, n, dist)
        return thr, sel, 0
