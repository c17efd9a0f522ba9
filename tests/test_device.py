"""One device setting: training and every diff computation run where ``crosscoder.device`` says.

CPU here: the whole path (training, latent table, scaling, reconstruction metrics, examples) with the device set
explicitly to "cpu" gives bitwise the results of the default; and every diff stage asks ``lm_diff.diff.device`` and
moves the store's batches to the device it names before encoding (checked with the meta device, which would fail on
the first tensor a stage forgot to move)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import InMemoryPairSource, planted_pair_data

from lm_diff.config import CrosscoderConfig, DiffConfig
from lm_diff.crosscoder import train as train_mod
from lm_diff.crosscoder.model import CrossCoder
from lm_diff.crosscoder.train import resolve_precision, train_crosscoder
from lm_diff.diff import device as xdev
from lm_diff.diff.examples import collect_examples
from lm_diff.diff.metrics import reconstruction_metrics
from lm_diff.diff.scaling import latent_scaling
from lm_diff.diff.table import latent_table


class MetaStore(InMemoryPairSource):
    """Adds the metadata the table and the examples read (doc_id, position, token_id, source_id, template)."""

    sources = ["web"]

    def iter_batches(self, batch_size, layer=None, models=(0, 1), split="train", shuffle_buffer=0, seed=0,
                     drop_last=False, with_meta=False, **_):
        start = 0
        for b in super().iter_batches(batch_size, layer, models, split, shuffle_buffer, seed, drop_last):
            n = b.shape[0]
            idx = torch.arange(start, start + n)
            start += n
            meta = {"doc_id": idx // 50, "position": idx % 50, "token_id": idx % 97, "source_id": torch.zeros(n, dtype=torch.long),
                    "template": idx % 7 == 0}
            yield (b, meta) if with_meta else b

    def docs(self):
        return []


def _cfg(**kw) -> CrosscoderConfig:
    base = dict(architecture="batchtopk", dict_size=64, k=4, lr=2e-3, batch_size=128, steps=20, warmup_steps=2,
                decay_fraction=0.2, normalisation="sqrt_d", shuffle_buffer=1, checkpoint_every=100, dead_tokens=256,
                threshold_start_step=2, seed=3)
    base.update(kw)
    return CrosscoderConfig(**base)


def _diff_all(cc, store):
    dcfg = DiffConfig(stream_batch_size=100, scaling_tokens=1000, top_examples=3, quantiles=2, random_examples=2, window=4)
    table = latent_table(cc, store, 0, (0, 1), dcfg)
    scaling = latent_scaling(cc, store, 0, (0, 1), cfg=dcfg, table=table, tokens=1000)
    rec = reconstruction_metrics(cc, store, 0, (0, 1), split="all", batch_size=100)
    ex = collect_examples(cc, store, 0, (0, 1), [0, 1, 2], None, dcfg)
    return table, scaling, rec, ex


def test_whole_path_with_device_cpu_matches_default(tmp_path):
    acts, _ = planted_pair_data(n_tokens=800, d=16, n_shared=8, n_a=4, n_b=4, seed=2)
    store = MetaStore(acts)
    assert _cfg().device == "models"   # a config built without a run: the CPU
    runs = {}
    for name, cfg in (("default", _cfg()), ("cpu", _cfg(device="cpu", precision="float32"))):
        out = train_crosscoder(store, cfg, tmp_path / name, progress=False)
        cc = CrossCoder.load(out, map_location=cfg.device if cfg.device != "models" else "cpu")
        runs[name] = (cc.state_dict(), _diff_all(cc, store))
    (wa, (ta, sa, ra, ea)), (wb, (tb, sb, rb, eb)) = runs["default"], runs["cpu"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    pd.testing.assert_frame_equal(ta, tb)
    pd.testing.assert_frame_equal(sa, sb)
    assert ra == rb and ea == eb
    assert ta["freq"].sum() > 0 and np.isfinite(ra["ev"]).all()


def test_every_diff_stage_moves_batches_to_the_crosscoder_device(monkeypatch):
    """Point the stages at the meta device: each must ask lm_diff.diff.device and encode meta tensors."""
    acts, _ = planted_pair_data(n_tokens=300, d=16, n_shared=8, n_a=4, n_b=4, seed=2)
    store = MetaStore(acts)
    cc = CrossCoder(16, 2, 32, "batchtopk", 4, normalisation="none")
    asked, seen = [], []

    class Reached(Exception):
        pass

    def fake_device(obj):
        asked.append(type(obj).__name__)
        return torch.device("meta")

    def encode(x, normalised=False, use_threshold=True):
        seen.append(x.device.type)
        raise Reached

    monkeypatch.setattr(xdev, "crosscoder_device", fake_device)
    monkeypatch.setattr(xdev, "stats_device", lambda dev: dev)
    monkeypatch.setattr(cc, "encode", encode)
    dcfg = DiffConfig(stream_batch_size=100)
    stages = {
        "latent_table": lambda: latent_table(cc, store, 0, (0, 1), dcfg),
        "latent_scaling": lambda: latent_scaling(cc, store, 0, (0, 1), cfg=dcfg, latents_B=[0], latents_A=[1],
                                                 baseline=0, tokens=300),
        "reconstruction_metrics": lambda: reconstruction_metrics(cc, store, 0, (0, 1), split="all"),
        "collect_examples": lambda: collect_examples(cc, store, 0, (0, 1), [0, 1], None, dcfg),
    }
    for name, run in stages.items():
        asked.clear()
        seen.clear()
        with pytest.raises(Reached):
            run()
        assert "CrossCoder" in asked, f"{name} did not ask where the crosscoder is"
        assert seen == ["meta"], f"{name} encoded a batch on {seen} instead of the crosscoder's device"


def test_training_reads_the_device_and_precision(tmp_path, monkeypatch):
    """The trainer builds on cfg.device (recorded through init_dist) and picks the GEMM dtype from precision."""
    acts, _ = planted_pair_data(n_tokens=400, d=16, n_shared=8, n_a=4, n_b=4, seed=2)
    got = []
    real = train_mod.init_dist

    def spy(device):
        got.append(device)
        return real(device)

    monkeypatch.setattr(train_mod, "init_dist", spy)
    train_crosscoder(InMemoryPairSource(acts), _cfg(device="cpu", steps=2), tmp_path / "a", progress=False)
    assert got == ["cpu"]
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(_cfg(), cpu) is None and resolve_precision(_cfg(), cuda) is torch.bfloat16
    assert resolve_precision(_cfg(precision="float32"), cuda) is None
    assert resolve_precision(_cfg(precision="bfloat16"), cpu) is torch.bfloat16


def test_bf16_gemms_train_close_to_fp32(tmp_path):
    """Mixed precision (bf16 GEMM operands, fp32 everything else) on the CPU: the same model up to bf16 rounding."""
    acts, _ = planted_pair_data(n_tokens=800, d=16, n_shared=8, n_a=4, n_b=4, seed=2)
    store = InMemoryPairSource(acts)
    a = CrossCoder.load(train_crosscoder(store, _cfg(steps=30), tmp_path / "fp32", progress=False))
    b = CrossCoder.load(train_crosscoder(store, _cfg(steps=30, precision="bfloat16"), tmp_path / "bf16", progress=False))
    assert a.W_dec_LMD.dtype == b.W_dec_LMD.dtype == torch.float32   # parameters and Adam state stay fp32
    rel = (a.W_dec_LMD - b.W_dec_LMD).norm() / a.W_dec_LMD.norm()
    assert 0 < float(rel.detach()) < 0.05


def test_checkpoint_loads_onto_the_device(tmp_path, monkeypatch):
    """CrossCoder.load reads the safetensors straight onto map_location and puts the module there."""
    from lm_diff.crosscoder import files as model_mod  # where CrossCoder.load reads the weights

    cc = CrossCoder(8, 2, 16, "batchtopk", 2)
    cc.save(tmp_path)
    devices = []
    real = model_mod.load_file

    def spy(path, device="cpu"):
        devices.append(device)
        return real(path, device=device)

    monkeypatch.setattr(model_mod, "load_file", spy)
    got = CrossCoder.load(tmp_path, map_location="cpu")
    assert devices == ["cpu"]
    assert {p.device.type for p in got.parameters()} == {"cpu"}
    assert all(torch.equal(a, b) for a, b in zip(cc.state_dict().values(), got.state_dict().values()))
