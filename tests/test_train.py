"""Trainer: schedules, exact resume after a kill, per-step log, and torchrun (2 processes == 1 process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import InMemoryPairSource, planted_pair_data

from lm_diff.config import CrosscoderConfig
from lm_diff.crosscoder.model import CrossCoder
from lm_diff.crosscoder.train import k_at, lr_at, train_crosscoder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices on a shared 2-core machine: one thread is faster and less noisy; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw) -> CrosscoderConfig:
    base = dict(architecture="batchtopk", dict_size=64, k=4, lr=2e-3, batch_size=128, steps=30, warmup_steps=5,
                decay_fraction=0.2, normalisation="sqrt_d", shuffle_buffer=1, checkpoint_every=10, dead_tokens=256,
                threshold_start_step=3, seed=7)
    base.update(kw)
    return CrosscoderConfig(**base)


def _weights(d):
    return CrossCoder.load(d).state_dict()


def test_schedules():
    c = _cfg(steps=100, warmup_steps=10, decay_fraction=0.2, lr=1.0, k=4, k_initial=20, k_anneal_steps=8)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == 1.0 and lr_at(50, c) == 1.0
    assert lr_at(80, c) == pytest.approx(1.0) and lr_at(90, c) == pytest.approx(0.5) and lr_at(99, c) == pytest.approx(0.05)
    assert k_at(0, c) == 20 and k_at(4, c) == 12 and k_at(8, c) == 4 and k_at(50, c) == 4
    assert k_at(3, _cfg(k=4)) == 4


@pytest.mark.parametrize("arch", ["batchtopk", "l1"])
def test_resume_after_kill_is_exact(tmp_path, arch):
    acts, _ = planted_pair_data(n_tokens=1000, d=16, n_shared=8, n_a=4, n_b=4, seed=1)   # 7 batches/epoch
    src = InMemoryPairSource(acts)
    cfg = _cfg(architecture=arch)
    full = train_crosscoder(src, cfg, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train_crosscoder(src, cfg, part, progress=False, max_steps=17)     # "killed" at step 17; checkpoint at 10
    state = json.loads((part / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10 and not (part / "crosscoder.json").exists()
    train_crosscoder(src, cfg, part, progress=False)                   # resumes from step 10
    a, b = _weights(full), _weights(part)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(l) for l in (part / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(30))
    full_log = [json.loads(l) for l in (full / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in full_log]
    assert not (part / "checkpoint").exists()
    if arch == "batchtopk":
        assert all(r["l0"] == pytest.approx(4.0) for r in log)          # effective k logged every step
        assert any(r["aux_or_sparsity"] > 0 for r in log)               # dead latents reached the aux loss
        assert float(CrossCoder.load(part).threshold) > 0
    assert all(len(r["ev"]) == 2 for r in log)
    # a complete directory is returned as is
    assert train_crosscoder(src, cfg, part, progress=False) == part


def test_k_annealing_effective_k_logged(tmp_path):
    acts, _ = planted_pair_data(n_tokens=512, d=16, n_shared=8, n_a=4, n_b=4)
    cfg = _cfg(steps=6, k=4, k_initial=16, k_anneal_steps=4, checkpoint_every=100)
    out = train_crosscoder(InMemoryPairSource(acts), cfg, tmp_path, progress=False)
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["k"] for r in log] == [16, 13, 10, 7, 4, 4]
    assert [r["l0"] for r in log] == pytest.approx([16, 13, 10, 7, 4, 4])


_DDP_SCRIPT = """
import sys, torch
sys.path[:0] = [{tests!r}, {repo!r}]
from safetensors.torch import load_file
from helpers import InMemoryPairSource
from lm_diff.config import CrosscoderConfig
from lm_diff.crosscoder.train import train_crosscoder
acts = load_file({data!r})["acts"]
cfg = CrosscoderConfig(**{cfg!r})
seen = set()


class Spy(InMemoryPairSource):
    def iter_batches(self, batch_size, drop_last=False, rows=None, **kw):
        for b in super().iter_batches(batch_size, drop_last=drop_last, rows=rows, **kw):
            seen.add(b.shape[0])
            yield b


train_crosscoder(Spy(acts), cfg, {out!r}, progress=False)
rank = torch.distributed.get_rank()
open({seen!r} + f".{{rank}}", "w").write(",".join(map(str, sorted(seen))))
"""


def test_torchrun_two_processes_match_one(tmp_path):
    """2 gloo processes with the same global batch reach the single-process weights within 1e-4 (float summation
    order differs; selection is global, so the same latents fire). Each rank's source yields only its half of every
    batch (``iter_batches(rows=...)``), never the whole batch."""
    from safetensors.torch import save_file

    acts, _ = planted_pair_data(n_tokens=1024, d=16, n_shared=8, n_a=4, n_b=4, seed=2)
    kw = dict(architecture="batchtopk", dict_size=64, k=4, lr=2e-3, batch_size=128, steps=12, warmup_steps=2,
              decay_fraction=0.0, normalisation="sqrt_d", shuffle_buffer=1, checkpoint_every=100, dead_tokens=256,
              threshold_start_step=2, seed=3)
    single = train_crosscoder(InMemoryPairSource(acts), CrosscoderConfig(**kw), tmp_path / "one", progress=False)
    save_file({"acts": acts}, str(tmp_path / "acts.safetensors"))
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(REPO / "tests"), repo=str(REPO), data=str(tmp_path / "acts.safetensors"),
                                         cfg=kw, out=str(tmp_path / "two"), seen=str(tmp_path / "rows")))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # Own process group, so that a hang (e.g. a stuck gloo rendezvous) kills the workers too, not only torchrun.
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish within 240 s")
    assert proc.returncode == 0, err[-3000:]
    meta = json.loads((tmp_path / "two" / "crosscoder.json").read_text())["metadata"]
    assert meta["world_size"] == 2
    assert [(tmp_path / f"rows.{r}").read_text() for r in (0, 1)] == ["64", "64"]  # B/2 rows per batch at the source
    a, b = _weights(single), _weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    la = [json.loads(l) for l in (single / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["l0"] for r in la] == [r["l0"] for r in lb]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-4)


def test_non_finite_batch_stops_with_one_user_error(tmp_path):
    """A poisoned activation store: one NaN in the 13th batch (step 12) stops training before that update; the
    checkpoint of step 10 stays as it was and no crosscoder is marked done."""
    from lm_diff.errors import UserError

    acts, _ = planted_pair_data(n_tokens=2000, d=16, n_shared=8, n_a=4, n_b=4, seed=1)
    clean = InMemoryPairSource(acts.clone(), layer=7)
    acts[12 * 128 + 5, 1, 3] = float("nan")
    src = InMemoryPairSource(acts, layer=7)
    src.stats = clean.stats   # the store's statistics were taken before the corruption
    out = tmp_path / "cc"
    with pytest.raises(UserError) as e:
        train_crosscoder(src, _cfg(steps=30, shuffle_buffer=0), out, progress=False, models=(0, 1))
    msg = str(e.value)
    assert "non-finite activations" in msg and "step 12" in msg and "models [0, 1]" in msg and "layer 7" in msg
    assert not (out / "crosscoder.json").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 10
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 12   # steps 0..11 logged, 12 never ran


def test_diverging_loss_stops_with_one_user_error(tmp_path):
    from lm_diff.errors import UserError

    acts, _ = planted_pair_data(n_tokens=1000, d=16, n_shared=8, n_a=4, n_b=4, seed=1)
    with pytest.raises(UserError, match=r"non-finite loss at step \d+"):
        train_crosscoder(InMemoryPairSource(acts), _cfg(lr=1e30, warmup_steps=0, grad_clip=0.0), tmp_path / "cc",
                         progress=False)
    assert not (tmp_path / "cc" / "crosscoder.json").exists()


def test_non_finite_store_statistics_stop_before_training(tmp_path):
    from lm_diff.errors import UserError

    acts, _ = planted_pair_data(n_tokens=1000, d=16, n_shared=8, n_a=4, n_b=4, seed=1)
    acts[3, 0, 0] = float("inf")
    with pytest.raises(UserError, match=r"models \[0, 1\], layer 0.*normalisation statistics"):
        train_crosscoder(InMemoryPairSource(acts), _cfg(), tmp_path / "cc", progress=False)
    assert not (tmp_path / "cc" / "crosscoder.json").exists()
