"""Sparse vs dense crosscoder training kernels (crosscoder/sparse.py, crosscoder/kernels.py): same values, gradients
and training trajectory within a stated tolerance; the per-row auxiliary top-k is exact; the path choice; the fused L1
kernel against plain autograd ops (values and gradients rtol 1e-5 / atol 1e-7, weights after Adam steps as above).

Tolerance: the sparse kernels sum the same products in another order, so fp32 results agree to ~1e-6 relative; the
tests allow rtol 1e-4 / atol 1e-6 on values and gradients and 1e-4 on weights after a few Adam steps.
"""

from __future__ import annotations

import pytest
import torch

from lm_diff.crosscoder.model import CrossCoder
from lm_diff.crosscoder.sparse import SPARSE_MAX_DENSITY, aux_select, use_sparse

B, M, D, L, K = 256, 2, 16, 512, 8


def _cc(arch="batchtopk", seed=2):
    cc = CrossCoder(D, M, L, arch, k=K, init_scale=0.2, seed=seed)
    with torch.no_grad():
        cc.b_enc_L.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
        cc.W_dec_LMD.mul_(torch.rand(L, 1, 1, generator=torch.Generator().manual_seed(seed)) + 0.5)
    return cc


def _x(seed=0):
    return torch.randn(B, M, D, generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(cc, x, kernel, dead=None, k_aux=0):
    cc.kernel = kernel
    cc.zero_grad(set_to_none=True)
    out = cc.train_forward(x, keep_pre=dead is not None, dead_L=dead, k_aux=k_aux)
    assert out["sparse"] == (kernel == "sparse")
    loss = cc.recon_loss(x, out["xhat"], B)
    aux = cc.aux_loss(x, out, dead, k_aux) if dead is not None else loss.new_zeros(())
    (loss + 0.5 * aux).backward()
    return out, float(loss.detach()), float(aux.detach()), {n: p.grad.clone() for n, p in cc.named_parameters()}


@pytest.mark.parametrize("dead_kind", ["none", "all", "some"])
def test_sparse_equals_dense_values_and_gradients(dead_kind):
    cc, x = _cc(), _x()
    dead = {"none": None, "all": torch.ones(L, dtype=torch.bool),
            "some": torch.rand(L, generator=torch.Generator().manual_seed(5)) < 0.3}[dead_kind]
    k_aux = 0 if dead is None else 24
    od, ld, ad, gd = _loss_and_grads(cc, x, "dense", dead, k_aux)
    os_, ls, as_, gs = _loss_and_grads(cc, x, "sparse", dead, k_aux)
    assert torch.equal(od["sel"], os_["sel"]) and od["thr"] == os_["thr"]
    assert torch.equal(od["f"].detach(), os_["f"])
    assert torch.allclose(od["xhat"], os_["xhat"], rtol=1e-4, atol=1e-6)
    assert ls == pytest.approx(ld, rel=1e-5) and as_ == pytest.approx(ad, rel=1e-4)
    if dead is not None:
        assert ad > 0
    for n in gd:
        assert torch.allclose(gd[n], gs[n], rtol=1e-4, atol=1e-6), n


def _plain_aux(pre, s, dead, k):
    sc = torch.relu(pre) * (s * dead)
    top = sc.topk(k, dim=1)
    idx = (top.indices + torch.arange(pre.shape[0])[:, None] * pre.shape[1]).reshape(-1)
    return idx[top.values.reshape(-1) > 0].sort().values


@pytest.mark.parametrize("case", ["random", "few_positive_rows", "adversarial_sample", "few_dead"])
def test_aux_select_is_the_exact_per_row_topk(case):
    g = torch.Generator().manual_seed(3)
    Bq, Lq, k = 64, 1024, 32
    pre, s = torch.randn(Bq, Lq, generator=g), torch.rand(Lq, generator=g) + 0.1
    dead = torch.ones(Lq, dtype=torch.bool)
    if case == "few_positive_rows":
        pre[:10] = -1.0
        pre[:10, :5] = 1.0          # rows with only 5 positive scores: all of them, nothing else
    elif case == "adversarial_sample":
        pre[:, ::8] += 20.0         # every sampled column is an outlier: the sampled bound overestimates
    elif case == "few_dead":
        dead = torch.rand(Lq, generator=g) < 0.02
    got = aux_select(pre, s, dead, k)
    assert torch.equal(got, _plain_aux(pre, s, dead, k))


def test_a_few_adam_steps_agree_between_paths():
    x = [_x(i) for i in range(4)]
    res = {}
    for kernel in ("dense", "sparse"):
        cc = _cc(seed=4)
        cc.kernel = kernel
        opt = torch.optim.Adam(cc.parameters(), lr=1e-3)
        dead = torch.zeros(L, dtype=torch.bool)
        dead[::3] = True
        for i in range(6):
            use_dead = dead if i % 2 else None
            out = cc.train_forward(x[i % 4], keep_pre=use_dead is not None, dead_L=use_dead, k_aux=16)
            loss = cc.recon_loss(x[i % 4], out["xhat"], B)
            if use_dead is not None:
                loss = loss + 0.25 * cc.aux_loss(x[i % 4], out, use_dead, 16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        res[kernel] = {n: p.detach().clone() for n, p in cc.named_parameters()}
    for n in res["dense"]:
        assert torch.allclose(res["dense"][n], res["sparse"][n], rtol=1e-4, atol=1e-5), n


def _plain_l1(cc, x):
    """The L1 forward as plain autograd ops (the reference for the fused ``_L1Step``)."""
    f = torch.relu(cc.pre_acts(x))
    s = cc.code_norm_L()
    return cc.decode(f, denormalise=False), f, cc.sparsity_loss(f, s, B), s


def _l1_cc(case):
    cc = _cc("l1") if case != "exclusive" else CrossCoder(D, M, L, "l1", k=K, init_scale=0.2, seed=2, exclusive=64)
    with torch.no_grad():
        cc.b_enc_L.normal_(0, 0.05, generator=torch.Generator().manual_seed(7))
        if case == "code_scale":
            cc.code_scale_M.copy_(torch.tensor([0.7, 1.9]))
        if case == "zero_rows":
            cc.W_dec_LMD[:5] = 0.0          # whole decoder rows at 0 (s_j = 0)
            cc.W_dec_LMD[5:9, 1] = 0.0      # one model's decoder at 0 (the norm's subgradient: 0)
    return cc


@pytest.mark.parametrize("case", ["plain", "code_scale", "zero_rows", "exclusive", "grads_on_f_and_s"])
def test_l1_kernel_matches_plain_autograd(case):
    """The fused L1 kernel: same f, x̂, sparsity term and s as plain autograd ops, and the same gradients (also when
    the loss uses f and s directly, with zero decoder norms, dedicated latents and a non-unit code scale)."""
    cc, x = _l1_cc(case), _x()
    if case == "exclusive":
        assert bool((cc.decoder_norms() == 0).any())
    lam = 0.3

    def loss_of(xhat, f, sp, s):
        loss = cc.recon_loss(x, xhat.reshape(B, M, D), B) + lam * sp
        if case == "grads_on_f_and_s":
            loss = loss + 0.01 * f.pow(2).mean() + 0.2 * s.pow(2).sum()
        return loss

    out = cc.train_forward(x)
    assert out["sparse"] is False and out["pre"] is None
    loss_of(out["xhat"], out["f"], out["sparsity"], out["s"]).backward()
    fast = {n: p.grad.clone() for n, p in cc.named_parameters()}
    cc.zero_grad(set_to_none=True)
    xhat, f, sp, s = _plain_l1(cc, x)
    loss_of(xhat, f, sp, s).backward()
    assert torch.allclose(out["f"].detach(), f.detach(), rtol=1e-6, atol=1e-7)
    assert torch.allclose(out["xhat"].detach(), xhat.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(out["s"].detach(), s.detach(), rtol=1e-6, atol=1e-7)
    assert float(out["sparsity"].detach()) == pytest.approx(float(sp.detach()), rel=1e-6)
    for n, p in cc.named_parameters():
        assert torch.isfinite(fast[n]).all(), n
        assert torch.allclose(fast[n], p.grad, rtol=1e-5, atol=1e-7), n


def test_l1_a_few_adam_steps_agree_with_plain_autograd():
    x = [_x(i) for i in range(4)]
    res = {}
    for path in ("fused", "plain"):
        cc = _l1_cc("zero_rows")
        opt = torch.optim.Adam(cc.parameters(), lr=1e-3)
        for i in range(4):
            xi = x[i % 4]
            if path == "fused":
                out = cc.train_forward(xi)
                xhat, sp = out["xhat"], out["sparsity"]
            else:
                xhat, _, sp, _ = _plain_l1(cc, xi)
            loss = cc.recon_loss(xi, xhat.reshape(B, M, D), B) + 0.5 * sp
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        res[path] = {n: p.detach().clone() for n, p in cc.named_parameters()}
    for n in res["fused"]:
        assert torch.allclose(res["fused"][n], res["plain"][n], rtol=1e-4, atol=1e-5), n


def test_l1_kernel_bf16_gemms_close_to_fp32():
    """Mixed precision (bf16 GEMM operands, fp32 accumulation and elementwise work): the fused L1 kernel's values and
    gradients agree with plain fp32 autograd up to bf16 rounding (relative norm of the difference < 2e-2)."""
    cc, x = _l1_cc("plain"), _x()
    cc.gemm_dtype = torch.bfloat16
    out = cc.train_forward(x)
    (cc.recon_loss(x, out["xhat"], B) + 0.3 * out["sparsity"]).backward()
    fast = {n: p.grad.clone() for n, p in cc.named_parameters()}
    cc.zero_grad(set_to_none=True)
    xhat, f, sp, _ = _plain_l1(cc, x)
    (cc.recon_loss(x, xhat.reshape(B, M, D), B) + 0.3 * sp).backward()

    def rel(a, b):
        return float((a.detach() - b.detach()).norm() / b.detach().norm())

    assert out["xhat"].dtype == torch.float32 and rel(out["xhat"], xhat) < 2e-2 and rel(out["f"], f) < 2e-2
    for n, p in cc.named_parameters():
        assert fast[n].dtype == torch.float32 and rel(fast[n], p.grad) < 2e-2, n


def test_path_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_sparse("auto", cpu, None, 32 / 4096)
    assert not use_sparse("auto", cpu, None, 2 * SPARSE_MAX_DENSITY)
    assert not use_sparse("auto", cuda, None, 32 / 4096)          # not measured faster on a GPU: dense
    assert not use_sparse("auto", cpu, torch.bfloat16, 32 / 4096)
    assert use_sparse("sparse", cuda, None, 0.5) and not use_sparse("dense", cpu, None, 0.001)
