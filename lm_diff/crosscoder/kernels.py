"""Autograd kernels of the BatchTopK crosscoder (encoder with top-k selection, decoder) and the CPU thread policy.

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


class _ReluEncode(torch.autograd.Function):
    """f = relu(x W + b) (the L1 encoder) with the GEMMs under :class:`_gemm`, the ReLU in place on the GEMM output and
    its backward masking dL/df in place (no extra B×L buffers)."""

    @staticmethod
    def forward(ctx, x, W, b, dt=None):
        with _gemm():
            f = _affine(b, x, W, dt)
        with _serial():
            f.relu_()
        ctx.dt = dt
        ctx.save_for_backward(x, W, f)
        return f

    @staticmethod
    def backward(ctx, grad_f):
        x, W, f = ctx.saved_tensors
        with _serial():
            reuse = grad_f.is_contiguous() and grad_f._base is None and grad_f.shape == f.shape
            dpre = grad_f.masked_fill_(f <= 0, 0.0) if reuse else grad_f.masked_fill(f <= 0, 0.0)
            grad_b = dpre.sum(0) if ctx.needs_input_grad[2] else None
        with _gemm():
            grad_x = _mm(dpre, W.t(), ctx.dt) if ctx.needs_input_grad[0] else None
            grad_W = _mm(x.t(), dpre, ctx.dt) if ctx.needs_input_grad[1] else None
        return grad_x, grad_W, grad_b, None
