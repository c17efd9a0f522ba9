"""Autograd kernels of the crosscoder (BatchTopK: encoder with top-k selection, decoder; L1: the whole forward in one
kernel) and the CPU thread policy.

``dt`` (``None`` or a dtype): the GEMMs' operand dtype. ``None`` keeps the fp32 ``addmm`` (bitwise the historical
arithmetic); ``torch.bfloat16`` (mixed precision on GPU) casts the GEMM operands to bf16 and accumulates/returns fp32,
so biases, selection, losses, statistics, gradients and the optimizer state stay fp32.
"""

from __future__ import annotations

from typing import Optional

import torch

from lm_diff.crosscoder.topk import topn_select

_GEMM_THREADS = 0   # > 1 inside ``train_threads``: the intra-op thread count that GEMMs get back


class _serial:
    """Run the enclosed ops on one intra-op thread (restored on exit).

    The selection and scatter work between the GEMMs is a few memory-bound passes plus many small ops. On the shared
    2-core CPU each parallel region costs a thread hand-off that can take milliseconds when the other core is busy
    (measured: a 40k-element op ~8 ms on 2 threads vs ~7 µs on one), far more than the work itself.
    """

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n > 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.n > 1:
            torch.set_num_threads(self.n)
        return False


class _gemm:
    """Inside :class:`train_threads`, give the enclosed GEMM every thread again; otherwise a no-op."""

    def __enter__(self):
        self.on = _GEMM_THREADS > 1 and torch.get_num_threads() == 1
        if self.on:
            torch.set_num_threads(_GEMM_THREADS)
        return self

    def __exit__(self, *exc):
        if self.on:
            torch.set_num_threads(1)
        return False


class train_threads:
    """Thread policy for a training step: the five GEMMs of the BatchTopK crosscoder use all intra-op threads, every
    other op (selection, loss, backward glue, gradient clipping, Adam) runs on one.

    Those other ops are memory-bound or small; on a shared CPU their parallel regions cost more in thread hand-offs
    than they save (see :class:`_serial`). Wrap forward, backward and the optimizer step: ``with train_threads(): ...``.
    A no-op with one thread; nests; restores the thread count on exit.
    """

    def __enter__(self):
        global _GEMM_THREADS
        self.n, self.prev = torch.get_num_threads(), _GEMM_THREADS
        if self.n > 1:
            _GEMM_THREADS = self.n
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        global _GEMM_THREADS
        if self.n > 1:
            torch.set_num_threads(self.n)
            _GEMM_THREADS = self.prev
        return False


def _mm(a: torch.Tensor, b: torch.Tensor, dt: Optional[torch.dtype]) -> torch.Tensor:
    """a @ b in fp32, or with ``dt`` operands and an fp32 result."""
    if dt is None or dt == a.dtype:
        return a @ b
    return torch.mm(a.to(dt), b.to(dt)).to(a.dtype)


def _affine(b: torch.Tensor, a: torch.Tensor, W: torch.Tensor, dt: Optional[torch.dtype]) -> torch.Tensor:
    """b + a @ W (``addmm`` in fp32; with ``dt`` the product in ``dt``, the bias added in fp32)."""
    if dt is None or dt == a.dtype:
        return torch.addmm(b, a, W)
    return _mm(a, W, dt).add_(b)


class _Decode(torch.autograd.Function):
    """x̂ = f W_dec + b_dec (a dense GEMM, as ``addmm`` and its backward) with the GEMMs under :class:`_gemm`."""

    @staticmethod
    def forward(ctx, f, W, b, dt=None):
        with _gemm():
            out = _affine(b, f, W, dt)
        ctx.dt = dt
        ctx.save_for_backward(f, W)
        return out

    @staticmethod
    def backward(ctx, g):
        f, W = ctx.saved_tensors
        grad_f = grad_W = grad_b = None
        with _gemm():
            if ctx.needs_input_grad[0]:
                grad_f = _mm(g, W.t(), ctx.dt)
            if ctx.needs_input_grad[1]:
                grad_W = _mm(f.t(), g, ctx.dt)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_f, grad_W, grad_b, None


class _TopKEncode(torch.autograd.Function):
    """pre = x W + b and f = pre on the BatchTopK-selected entries (0 elsewhere), with a sparse-aware backward.

    Outputs ``(f, pre)``. With ``keep_pre`` False, ``pre`` is not returned (None) and f is built in its memory; with
    ``keep_pre`` it carries gradient when used (the auxiliary loss). d f/d pre = 1 on the selected entries (all have
    pre > 0), so dL/dpre is dL/df gathered there and scattered into zeros: no B×L mask or ``where`` is formed, and the
    bias gradient is an ``index_add`` over the selected entries.
    """

    @staticmethod
    def forward(ctx, x, W, b, s, n, dist, info, keep_pre, dt=None):
        with _gemm():
            pre = _affine(b, x, W, dt)
        with _serial():
            thr, sel, n_cand = topn_select(pre, s, n, dist)
            vals = pre.view(-1).index_select(0, sel)
            f = torch.zeros_like(pre) if keep_pre else pre.zero_()
            f.view(-1).index_copy_(0, sel, vals)
        info["thr"], info["topk_candidates"], info["sel"] = thr, n_cand, sel
        ctx.dt = dt
        ctx.save_for_backward(x, W, sel)
        ctx.set_materialize_grads(False)
        return f, (pre if keep_pre else None)

    @staticmethod
    def backward(ctx, grad_f, grad_pre):
        x, W, sel = ctx.saved_tensors
        B, L = x.shape[0], W.shape[1]
        none = (None,) * 7
        if grad_f is None and grad_pre is None:
            return (None, None, None) + none[1:]
        grad_b = None
        with _serial():
            if grad_pre is None:
                vals = grad_f.reshape(-1).index_select(0, sel)
                # dL/df comes straight from the decoder GEMM: reuse its memory for dL/dpre
                reuse = grad_f.is_contiguous() and grad_f.shape == (B, L) and grad_f._base is None
                dpre = grad_f.zero_() if reuse else vals.new_zeros((B, L))
                dpre.view(-1).index_copy_(0, sel, vals)
                if ctx.needs_input_grad[2]:
                    grad_b = vals.new_zeros(L).index_add_(0, sel % L, vals)
            else:
                dpre = grad_pre.clone(memory_format=torch.contiguous_format)
                if grad_f is not None:
                    dpre.view(-1).index_add_(0, sel, grad_f.reshape(-1).index_select(0, sel))
                if ctx.needs_input_grad[2]:
                    grad_b = dpre.sum(0)
        with _gemm():
            grad_x = _mm(dpre, W.t(), ctx.dt) if ctx.needs_input_grad[0] else None
            grad_W = _mm(x.t(), dpre, ctx.dt) if ctx.needs_input_grad[1] else None
        return (grad_x, grad_W, grad_b) + none[1:]


def _colsum(a_BL: torch.Tensor) -> torch.Tensor:
    """Column sums of a (B, L) matrix as a GEMV (1ᵀ a): one streaming read, ~2.5× faster than ``a.sum(0)`` on the CPU
    (measured 0.46 vs 1.03 ms at 1024 × 4096 on one thread)."""
    return torch.mv(a_BL.t(), a_BL.new_ones(a_BL.shape[0]))


class _L1Step(torch.autograd.Function):
    """The whole L1 crosscoder forward in one kernel, so its backward needs no autograd glue between the GEMMs:

        f   = relu(x W_enc + b_enc)                  (bias and ReLU in place on the GEMM output, on one thread)
        s_j = Σ_m c_m ‖W_dec[j, m]‖                  (c = ``code_scale_M``; the code norms)
        sp  = inv_n Σ_j s_j Σ_b f_bj                 (the sparsity term; Σ_b f_bj as a GEMV)
        x̂   = f W_dec + b_dec

    Outputs ``(xhat, f, sp, s)``, all with gradient (f and s usually get none). Backward, with c_sp = inv_n ∂L/∂sp:
    dL/df = g W_decᵀ, plus c_sp s_j on every row, masked by f > 0 (two in-place passes over the GEMM's output, no other
    B×L buffer); dL/db_enc = 1ᵀ dL/dpre (GEMV); dL/dW_dec = fᵀ g plus the norm term (c_sp Σ_b f_bj + ∂L/∂s_j) c_m
    W_dec[j, m] / ‖W_dec[j, m]‖ added in one pass (0 where the norm is 0, autograd's subgradient), instead of
    autograd's norm backward and gradient accumulation (≈6 passes over W_dec). The GEMMs run under :class:`_gemm`.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec_LMD, b_dec, code_scale_M, inv_n, dt=None):
        L = W_enc.shape[1]
        W_dec = W_dec_LMD.reshape(L, -1)
        norm_LM = torch.linalg.vector_norm(W_dec_LMD, dim=-1)
        s = torch.mv(norm_LM, code_scale_M)
        with _gemm():
            f = _mm(x, W_enc, dt)
        with _serial():   # the biases added here, not by addmm: its broadcast copy would run on every thread
            f.add_(b_enc).relu_()
            col_L = _colsum(f)
            sp = torch.dot(col_L, s) * inv_n
        with _gemm():
            xhat = _mm(f, W_dec, dt)
        with _serial():
            xhat.add_(b_dec)
        ctx.dt, ctx.inv_n = dt, inv_n
        ctx.save_for_backward(x, W_enc, W_dec_LMD, code_scale_M, f, s, col_L, norm_LM)
        ctx.set_materialize_grads(False)
        return xhat, f, sp, s

    @staticmethod
    def backward(ctx, g, grad_f, grad_sp, grad_s):
        x, W_enc, W_dec_LMD, code_scale_M, f, s, col_L, norm_LM = ctx.saved_tensors
        L = W_enc.shape[1]
        W_dec = W_dec_LMD.reshape(L, -1)
        need = ctx.needs_input_grad
        c_sp = grad_sp * ctx.inv_n if grad_sp is not None else None
        dfeat = None   # dL/df, then dL/dpre in the same memory
        grad_x = grad_W_enc = grad_b_enc = grad_W_dec = grad_b_dec = None
        if g is not None:
            g = g.contiguous()
            with _gemm():
                dfeat = _mm(g, W_dec.t(), ctx.dt)
                if need[3]:
                    grad_W_dec = _mm(f.t(), g, ctx.dt)
            if need[4]:
                grad_b_dec = _colsum(g)
        with _serial():
            if grad_f is not None:
                dfeat = grad_f.clone(memory_format=torch.contiguous_format) if dfeat is None else dfeat.add_(grad_f)
            if c_sp is not None:
                dfeat = (s * c_sp).expand_as(f).clone() if dfeat is None else dfeat.add_(s * c_sp)
            if dfeat is not None:
                dpre = torch.ops.aten.threshold_backward.grad_input(dfeat, f, 0.0, grad_input=dfeat)   # 0 where f = 0
                if need[2]:
                    grad_b_enc = _colsum(dpre)
        if dfeat is not None:
            with _gemm():
                grad_x = _mm(dpre, W_enc.t(), ctx.dt) if need[0] else None
                grad_W_enc = _mm(x.t(), dpre, ctx.dt) if need[1] else None
        ds_L = col_L * c_sp if c_sp is not None else None   # dL/ds
        if grad_s is not None:
            ds_L = grad_s if ds_L is None else ds_L + grad_s
        if need[3] and ds_L is not None:   # d s_j / d W_dec[j, m] = c_m W_dec[j, m] / ‖W_dec[j, m]‖
            coef_LM1 = torch.where(norm_LM > 0, ds_L[:, None] * code_scale_M / norm_LM, 0.0).unsqueeze(-1)
            if grad_W_dec is None:
                grad_W_dec = W_dec_LMD * coef_LM1
            else:
                grad_W_dec = grad_W_dec.view_as(W_dec_LMD).addcmul_(W_dec_LMD, coef_LM1)
        if grad_W_dec is not None:
            grad_W_dec = grad_W_dec.view_as(W_dec_LMD)
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None, None
