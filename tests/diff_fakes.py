"""Small fakes for the diff-stage tests: an in-memory activation store and a hand-built crosscoder."""

from __future__ import annotations

import numpy as np
import torch


class FakeStore:
    """List-of-tensors store with the ``ActivationStore.iter_batches`` contract (store order, split 'all')."""

    def __init__(self, acts_NMD, meta: dict, sources=("web", "chat"), docs=None):
        self.acts = torch.as_tensor(acts_NMD, dtype=torch.float32)
        self.meta = {k: torch.as_tensor(np.asarray(v)) for k, v in meta.items()}
        self.sources = list(sources)
        self._docs = docs or []
        self.n_tokens = self.acts.shape[0]

    def docs(self):
        return self._docs

    def iter_batches(self, batch_size, layer=None, models=(0, 1), split="train", shuffle_buffer=0, seed=0, with_meta=False):
        a = self.acts[:, list(models)]
        for s in range(0, len(a), batch_size):
            out = a[s:s + batch_size]
            yield (out, {k: v[s:s + batch_size] for k, v in self.meta.items()}) if with_meta else out


def make_cc(W_enc_MDL, W_dec_LMD, b_enc_L=None):
    """A real L1 CrossCoder (plain ReLU encoder, no normalisation) with the given weights."""
    from lm_diff.crosscoder.model import CrossCoder

    W_enc = torch.as_tensor(np.asarray(W_enc_MDL), dtype=torch.float32)
    W_dec = torch.as_tensor(np.asarray(W_dec_LMD), dtype=torch.float32)
    M, D, L = W_enc.shape
    cc = CrossCoder(D, M, L, arch="l1", k=1, normalisation="none")
    with torch.no_grad():
        cc.W_enc_MDL.copy_(W_enc)
        cc.W_dec_LMD.copy_(W_dec)
        cc.b_enc_L.copy_(torch.zeros(L) if b_enc_L is None else torch.as_tensor(b_enc_L, dtype=torch.float32))
        cc.b_dec_MD.zero_()
    return cc


def planted(n: int = 4000, seed: int = 0):
    """Crosscoder + store with known Latent Scaling answers (D = 7, L = 6, basis vectors e0..e6).

    j0 true B-only (d^B = e0, concept only in B)          -> nu_eps = 0, nu_r = 0 (specific)
    j1 Complete Shrinkage (d^B = e1, concept in A and B)  -> nu_eps = 1, nu_r = 0
    j2 B half of Latent Decoupling (d^B = e2)             -> nu_eps = 0, nu_r = 1
    j3 A half of Latent Decoupling (d^A = e2)             -> mirrored nu_r = 1
    j4 shared (d^A = d^B = e3)                            -> nu = 1
    j5 dead (negative bias)
    Token meta: source 0/1 alternating, every 4th token a template token.
    """
    rng = np.random.default_rng(seed)
    D, L = 7, 6
    e = np.eye(D)
    a = rng.uniform(0.5, 2.0, size=(n, 4)) * (rng.random((n, 4)) < 0.5)
    xA = a[:, 1:2] * e[1] + a[:, 2:3] * e[2] + a[:, 3:4] * e[3] + 0.1 * rng.normal(size=(n, 1)) * e[5]
    xB = a[:, 0:1] * e[0] + a[:, 1:2] * e[1] + a[:, 2:3] * e[2] + a[:, 3:4] * e[3] + 0.1 * rng.normal(size=(n, 1)) * e[6]
    W_enc = np.zeros((2, D, L))
    W_enc[1, :, 0] = e[0]
    W_enc[1, :, 1] = e[1]
    W_enc[1, :, 2] = e[2]
    W_enc[0, :, 3] = e[2]
    W_enc[0, :, 4] = 0.5 * e[3]
    W_enc[1, :, 4] = 0.5 * e[3]
    W_dec = np.zeros((L, 2, D))
    W_dec[0, 1] = e[0]
    W_dec[1, 1] = e[1]
    W_dec[2, 1] = e[2]
    W_dec[3, 0] = e[2]
    W_dec[4, 0] = e[3]
    W_dec[4, 1] = e[3]
    W_dec[5, 0] = e[4]
    W_dec[5, 1] = 0.8 * e[4]
    b_enc = np.zeros(L)
    b_enc[5] = -1.0
    cc = make_cc(W_enc, W_dec, b_enc)
    meta = {
        "token_id": rng.integers(4, 100, size=n),
        "doc_id": np.arange(n) // 50,
        "position": np.arange(n) % 50,
        "source_id": np.arange(n) % 2,
        "template": (np.arange(n) % 4) == 0,
    }
    store = FakeStore(np.stack([xA, xB], axis=1), meta)
    return cc, store, a
