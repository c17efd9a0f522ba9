"""Metrics: pure functions against hand-computed values, streaming accumulator, spliced ΔCE/KL with tensor- and
tuple-returning decoder layers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import InMemoryPairSource, make_tiny_model, planted_pair_data

from lm_diff.crosscoder.model import CrossCoder
from lm_diff.diff import metrics as mt


def test_pure_metrics_hand_computed():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    xh = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert mt.fvu(x, xh) == pytest.approx(0.5)                       # 1 / 2
    assert mt.explained_variance(x, xh) == pytest.approx(0.5)
    assert mt.explained_variance(x, xh, centred=True) == pytest.approx(0.75)   # 1 - 0.25 / 1
    assert mt.relative_reconstruction_bias(x, xh) == pytest.approx(5 / 7)
    f = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0]])
    assert mt.l0(f) == 1.5 and mt.dead_fraction(f) == pytest.approx(1 / 3)
    mask = torch.ones(1, 1)
    uniform = torch.zeros(1, 1, 4)
    assert float(mt.cross_entropy(uniform, torch.tensor([[2]]), mask)) == pytest.approx(math.log(4))
    p, q = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[0.0, math.log(3)]]])
    want = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert float(mt.kl_divergence(p, q, mask)) == pytest.approx(want)
    assert float(mt.kl_divergence(p, p, mask)) == 0.0
    # masked positions are ignored
    logits = torch.stack([uniform[0, 0], torch.tensor([9.0, 0, 0, 0])]).unsqueeze(0)
    assert float(mt.cross_entropy(logits, torch.tensor([[2, 1]]), torch.tensor([[1.0, 0.0]]))) == pytest.approx(math.log(4))


def test_accumulator_matches_pure_functions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, 5, generator=g) + 1.0
    xh = x + 0.3 * torch.randn(300, 2, 5, generator=g) + 0.1
    f = torch.relu(torch.randn(300, 7, generator=g))
    f[:, 3] = 0
    acc = mt.ReconAccumulator(2, 5, 7)
    for s in range(0, 300, 64):
        acc.update(x[s:s + 64], xh[s:s + 64], f[s:s + 64])
    r = acc.result()
    for m in range(2):
        assert r["ev"][m] == pytest.approx(mt.explained_variance(x[:, m], xh[:, m]), rel=1e-9)
        assert r["ev_centred"][m] == pytest.approx(mt.explained_variance(x[:, m], xh[:, m], centred=True), rel=1e-9)
        assert r["rel_bias"][m] == pytest.approx(mt.relative_reconstruction_bias(x[:, m], xh[:, m]), rel=1e-9)
        assert r["fvu"][m] == pytest.approx(1 - r["ev"][m])
    assert r["l0"] == pytest.approx(mt.l0(f)) and r["dead_fraction"] == pytest.approx(1 / 7)


def test_reconstruction_metrics_on_store():
    acts, _ = planted_pair_data(n_tokens=600, d=8, n_shared=4, n_a=2, n_b=2)
    src = InMemoryPairSource(acts, heldout=200)
    cc = CrossCoder(8, 2, 16, "l1", k=4, normalisation="sqrt_d")
    cc.fit_normalisation(acts)
    r = mt.reconstruction_metrics(cc, src, models=(0, 1), batch_size=64)
    assert r["n_tokens"] == 200 and len(r["ev"]) == 2 and 0 <= r["dead_fraction"] <= 1


class _IdentityCC:
    """Stands in for a crosscoder with perfect reconstruction (or with added noise)."""

    def __init__(self, n_models, noise=0.0):
        self.n_models, self.noise = n_models, noise

    def encode(self, acts):
        return acts.reshape(acts.shape[0], -1)

    def decode(self, f):
        out = f.reshape(f.shape[0], self.n_models, -1)
        return out + self.noise * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))


class _TupleLM(torch.nn.Module):
    """Old-style model whose decoder layers return tuples (transformers 4 convention)."""

    class Layer(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = torch.nn.Linear(d, d)

        def forward(self, h):
            return (h + torch.tanh(self.lin(h)), None)

    def __init__(self, vocab=50, d=16, n=3):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList([self.Layer(d) for _ in range(n)])
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        for layer in self.layers:
            h = layer(h)[0]
        return SimpleNamespace(logits=self.head(h))


@pytest.mark.parametrize("kind", ["gpt2", "tuple"])
def test_spliced_metrics_identity_and_noise(kind):
    model = make_tiny_model("gpt2", layers=2, hidden=32, vocab_size=64) if kind == "gpt2" else _TupleLM(64)
    ids = torch.randint(4, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    r = mt.spliced_metrics(_IdentityCC(2), [model, model], ids, layer=0, model_index=1, attention_mask=mask)
    assert r["delta_ce"] == pytest.approx(0.0, abs=1e-9) and r["kl"] == pytest.approx(0.0, abs=1e-9)
    assert r["n_positions"] == 11 + 8
    noisy = mt.spliced_metrics(_IdentityCC(2, noise=1.0), [model, model], ids, layer=0, model_index=1,
                               attention_mask=mask)
    assert noisy["kl"] > 1e-4
    # single model + precomputed paired activations gives the same numbers
    cap = []
    mt._run(model, ids, mask, 0, capture=cap)
    acts = torch.stack([cap[0], cap[0]], dim=2)
    same = mt.spliced_metrics(_IdentityCC(2, noise=1.0), model, ids, 0, 1, attention_mask=mask, acts_BTMD=acts)
    assert same["kl"] == pytest.approx(noisy["kl"], rel=1e-6)


def test_spliced_metrics_real_crosscoder():
    model = make_tiny_model("gpt2", layers=2, hidden=32, vocab_size=64)
    ids = torch.randint(4, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    cc = CrossCoder(32, 2, 64, "batchtopk", k=8, normalisation="sqrt_d")
    r = mt.spliced_metrics(cc, [model, model], ids, layer=1, model_index=0)
    assert r["kl"] >= 0 and math.isfinite(r["delta_ce"])
