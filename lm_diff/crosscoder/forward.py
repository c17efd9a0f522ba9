"""The crosscoder's training forward and auxiliary loss, on the dense kernels (``kernels.py``) or the sparse ones
(``sparse.py``), chosen per step by :func:`lm_diff.crosscoder.sparse.use_sparse` from ``CrossCoder.kernel``.

Both paths compute the same values and gradients up to floating-point summation order (tests/test_kernels.py). The
functions take the :class:`~lm_diff.crosscoder.model.CrossCoder` as their first argument; its methods
``train_forward`` and ``aux_loss`` call them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lm_diff.crosscoder.dist import LOCAL, DistCtx
from lm_diff.crosscoder.kernels import _Decode, _L1Step, _TopKEncode
from lm_diff.crosscoder.sparse import SparseDecode, SparseTopKEncode, use_sparse


def train_forward(cc, x_BMD: torch.Tensor, k: Optional[int] = None, dist: DistCtx = LOCAL, keep_pre: bool = True,
                  dead_L: Optional[torch.Tensor] = None, k_aux: int = 0) -> dict[str, Any]:
    """See :meth:`CrossCoder.train_forward`."""
    B = x_BMD.shape[0]
    L = cc.dict_size
    x2 = x_BMD.reshape(B, -1)
    W_enc, W_dec = cc.W_enc_MDL.reshape(-1, L), cc.W_dec_LMD.reshape(L, -1)
    info: dict[str, Any] = {"topk_candidates": 0, "thr": x_BMD.new_tensor(-1.0), "sparse": False}
    dt = cc.gemm_dtype
    if cc.arch == "l1":
        xhat, f, info["sparsity"], s = _L1Step.apply(x2, W_enc, cc.b_enc_L, cc.W_dec_LMD, cc.b_dec_MD.reshape(-1),
                                                     cc.code_scale_M, 1.0 / (B * dist.world), dt)
        pre = None
    else:
        with torch.no_grad():
            s = cc.code_norm_L()   # once per step; only the (detached) ranking uses it
        kk = int(k or cc.k)
        n = kk * B * dist.world
        k_aux = k_aux if dead_L is not None else 0
        density = (kk + k_aux) / L
        if use_sparse(getattr(cc, "kernel", "auto"), x_BMD.device, dt, density):
            vals, aux_vals = SparseTopKEncode.apply(x2, W_enc, cc.b_enc_L, s, n, dist, info, dead_L, k_aux,
                                                    cc._scratch)
            xhat = SparseDecode.apply(vals, W_dec, cc.b_dec_MD.reshape(-1), info["code"])
            pre, f = None, info.pop("f_dense")   # the aux entries are already selected: no pre to keep
            info.update(sparse=True, vals=vals, aux_vals=aux_vals)
        else:
            f, pre = _TopKEncode.apply(x2, W_enc, cc.b_enc_L, s, n, dist, info, keep_pre, dt)
            xhat = _Decode.apply(f, W_dec, cc.b_dec_MD.reshape(-1), dt)
    info.update(pre=pre, f=f, s=s, xhat=xhat.reshape(B, cc.n_models, cc.d_model))
    return info


def aux_loss(cc, x_BMD: torch.Tensor, out: dict[str, Any], dead_L: torch.Tensor, k_aux: int,
             dist: DistCtx = LOCAL) -> torch.Tensor:
    """See :meth:`CrossCoder.aux_loss`."""
    B = x_BMD.shape[0]
    W = cc.W_dec_LMD.reshape(cc.dict_size, -1)
    e = (x_BMD - out["xhat"]).detach().reshape(B, -1)
    if out.get("sparse"):
        if out.get("aux_code") is None:
            raise ValueError("the sparse aux_loss needs train_forward(..., dead_L=, k_aux=)")
        recon = SparseDecode.apply(out["aux_vals"], W, None, out["aux_code"])
    else:
        dead_idx = dead_L.nonzero().flatten()
        if dead_idx.numel() == 0 or k_aux <= 0:
            return out["xhat"].new_zeros(())
        if out["pre"] is None:
            raise ValueError("aux_loss needs train_forward(..., keep_pre=True)")
        k_aux = min(k_aux, dead_idx.numel())
        all_dead = dead_idx.numel() == cc.dict_size   # no selection copy when every latent is dead
        z_dead = torch.relu(out["pre"] if all_dead else out["pre"].index_select(1, dead_idx))
        s = out["s"].detach()
        scores = z_dead.detach() * (s if all_dead else s[dead_idx])
        idx = scores.topk(k_aux, dim=1, sorted=False).indices
        f_aux = torch.zeros_like(z_dead).scatter(1, idx, z_dead.gather(1, idx))
        W_dead = W if all_dead else W.index_select(0, dead_idx)
        recon = _Decode.apply(f_aux, W_dead, W.new_zeros(()).expand(W.shape[1]), cc.gemm_dtype)
    num = (e - recon).pow(2).sum()
    with torch.no_grad():
        n = dist.sum_(e.new_tensor([float(B)]))
        e_sum = dist.sum_(e.sum(0))
        e2 = dist.sum_(e.pow(2).sum().reshape(1))
        denom = (e2 - e_sum.pow(2).sum() / n) / n
    return (num / n / denom.clamp_min(1e-12)).reshape(())
