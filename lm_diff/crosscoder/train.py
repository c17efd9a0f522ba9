"""Crosscoder trainer: Adam, warmup + optional linear decay, grad clipping, exact resume, optional torchrun DDP.

``train_crosscoder(store, cfg, out_dir)`` writes into ``out_dir``:

- ``crosscoder.safetensors`` + ``crosscoder.json``: the final model (``CrossCoder.load(out_dir)``); the JSON is written
  last and marks completion. A second call with a complete ``out_dir`` returns at once.
- ``train_log.jsonl``: one JSON object per step (loss, recon, aux/sparsity, effective k ``l0``, ``ev`` per model on the
  batch, lr, k, threshold, dead fraction, ``topk_candidates``: candidates of the exact top-k, 0 = flat top-k).
- ``checkpoint/`` (removed on completion): ``state.safetensors`` (model, Adam moments, dead counters, RNG states as
  uint8 tensors; no pickle) and ``state.json`` (step, data-iterator position ``epoch``/``batch``). Written atomically
  every ``cfg.checkpoint_every`` steps; a rerun resumes from it and reaches the same final weights as an uninterrupted
  run (bit-exact in one process: same batches, same arithmetic).

Data: epoch e streams ``store.iter_batches(cfg.batch_size, layer, models, "train", cfg.shuffle_buffer,
seed=cfg.seed + e)``, keeping only full batches; resuming re-opens epoch e and skips the batches already used.

Multi-process (``torchrun --nproc_per_node N``, gloo on CPU): every rank reads the same global batch and keeps its own
contiguous slice of B/N rows. BatchTopK selects the top k·B over the *global* batch (candidate values are all-gathered),
losses are normalised by the global batch size and gradients are summed with one all-reduce, so N processes compute the
same update as one up to floating-point summation order. Rank 0 writes every file.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from lm_diff.config import CrosscoderConfig
from lm_diff.crosscoder.model import CONFIG_FILE, CrossCoder, DistCtx, train_threads
from lm_diff.errors import UserError

CKPT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"


# ----------------------------------------------------------------------------------------------------------------------
# Schedules


def lr_at(step: int, cfg: CrosscoderConfig) -> float:
    """Linear warmup over ``warmup_steps`` (from lr/warmup), then constant, then linear decay to 0 over the final
    ``decay_fraction`` of ``steps``."""
    lr = cfg.lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    if cfg.decay_fraction > 0:
        decay_start = cfg.steps * (1 - cfg.decay_fraction)
        if step >= decay_start:
            lr *= max(0.0, (cfg.steps - step) / (cfg.steps - decay_start))
    return lr


def k_at(step: int, cfg: CrosscoderConfig) -> int:
    """k_t = k_initial − (k_initial − k)·t/T during annealing, then k (logged every step)."""
    if cfg.k_initial is None or cfg.k_anneal_steps <= 0 or step >= cfg.k_anneal_steps:
        return cfg.k
    return int(round(cfg.k_initial - (cfg.k_initial - cfg.k) * step / cfg.k_anneal_steps))


# ----------------------------------------------------------------------------------------------------------------------
# Data


def _batch_tensor(item: Any) -> torch.Tensor:
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):
        item = item["acts_BMD"]
    return item


def _open_epoch(store, cfg: CrosscoderConfig, layer, models, epoch: int) -> Iterator[torch.Tensor]:
    kwargs: dict[str, Any] = dict(layer=layer, models=tuple(models), split="train", shuffle_buffer=cfg.shuffle_buffer,
                                  seed=cfg.seed + epoch)
    try:
        if "drop_last" in inspect.signature(store.iter_batches).parameters:
            kwargs["drop_last"] = True
    except (TypeError, ValueError):
        pass
    for item in store.iter_batches(cfg.batch_size, **kwargs):
        x = _batch_tensor(item)
        if x.shape[0] == cfg.batch_size:
            yield x


class _Batches:
    """Endless stream of full global batches with a resumable position (epoch, batch index within the epoch)."""

    def __init__(self, store, cfg, layer, models, epoch: int = 0, batch: int = 0):
        self.store, self.cfg, self.layer, self.models = store, cfg, layer, models
        self.epoch, self.batch = epoch, batch
        self._it = self._open(skip=batch)

    def _open(self, skip: int):
        it = _open_epoch(self.store, self.cfg, self.layer, self.models, self.epoch)
        for _ in range(skip):
            next(it)
        return it

    def next(self) -> torch.Tensor:
        for attempt in range(2):
            try:
                x = next(self._it)
                self.batch += 1
                return x
            except StopIteration:
                if attempt == 1 or self.batch == 0:
                    break
                self.epoch, self.batch = self.epoch + 1, 0
                self._it = self._open(0)
        raise UserError(
            f"the activation store yields no full batch of {self.cfg.batch_size} training tokens; "
            "capture more tokens or lower crosscoder.batch_size")


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_tensors() -> dict[str, torch.Tensor]:
    import random

    import numpy as np

    py = json.dumps(random.getstate()[1]).encode()
    np_state = np.random.get_state()
    return {
        "rng.torch": torch.get_rng_state(),
        "rng.python": torch.frombuffer(bytearray(py), dtype=torch.uint8).clone(),
        "rng.numpy": torch.from_numpy(np_state[1].astype(np.uint32).view(np.uint8).copy()),
        "rng.numpy_pos": torch.tensor([np_state[2]], dtype=torch.int64),
    }


def _set_rng(t: dict[str, torch.Tensor]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(t["rng.torch"])
    py = json.loads(bytes(t["rng.python"].tolist()).decode())
    random.setstate((3, tuple(py), None))
    np.random.set_state(("MT19937", t["rng.numpy"].numpy().view(np.uint32).copy(), int(t["rng.numpy_pos"][0]), 0, 0.0))


def _save_checkpoint(out_dir: Path, cc: CrossCoder, opt: torch.optim.Adam, since_fired: torch.Tensor,
                     state: dict[str, Any]) -> None:
    from lm_diff.io import atomic_dir, save_safetensors, write_json

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in cc.state_dict().items()}
    for i, p in enumerate(cc.parameters()):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in st:
                v = st[key]
                tensors[f"adam.{i}.{key}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
    tensors["since_fired_L"] = since_fired
    tensors.update(_rng_tensors())
    with atomic_dir(out_dir / CKPT_DIR) as tmp:
        save_safetensors(tmp / "state.safetensors", tensors)
        write_json(tmp / "state.json", state)


def _load_checkpoint(out_dir: Path, cc: CrossCoder, opt: torch.optim.Adam) -> Optional[tuple[dict, torch.Tensor]]:
    from safetensors.torch import load_file

    d = out_dir / CKPT_DIR
    if not (d / "state.json").exists():
        return None
    state = json.loads((d / "state.json").read_text(encoding="utf-8"))
    t = load_file(str(d / "state.safetensors"))
    cc.load_state_dict({k[len("model."):]: v for k, v in t.items() if k.startswith("model.")})
    for i, p in enumerate(cc.parameters()):
        if f"adam.{i}.exp_avg" in t:
            opt.state[p] = {"step": t[f"adam.{i}.step"].clone(), "exp_avg": t[f"adam.{i}.exp_avg"].clone(),
                            "exp_avg_sq": t[f"adam.{i}.exp_avg_sq"].clone()}
    _set_rng(t)
    return state, t["since_fired_L"].clone()


def _truncate_log(path: Path, step: int) -> None:
    """Keep log lines of steps < ``step`` (those after the checkpoint are redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line)["step"] < step:
                keep.append(line)
    from lm_diff.io import write_text

    write_text(path, "".join(l + "\n" for l in keep))


# ----------------------------------------------------------------------------------------------------------------------


def build_crosscoder(cfg: CrosscoderConfig, d_model: int, n_models: int) -> CrossCoder:
    loss = cfg.l1_loss if cfg.architecture == "l1" else getattr(cfg, "batchtopk_loss", "unsquared")
    loss = {"anthropic": "mse"}.get(loss, loss)
    return CrossCoder(d_model, n_models, cfg.dict_size, cfg.architecture, cfg.k, init_scale=cfg.init_scale,
                      normalisation=cfg.normalisation, loss=loss,
                      threshold_start_step=getattr(cfg, "threshold_start_step", 1000), seed=cfg.seed,
                      exclusive=cfg.exclusive)


def _fit_normalisation(cc: CrossCoder, store, cfg, layer, models) -> None:
    if cc.normalisation == "none":
        return
    stats = None
    if hasattr(store, "stats"):
        with contextlib.suppress(Exception):
            stats = store.stats(layer)
    idx = list(models)
    if stats is not None and cc.normalisation == "sqrt_d" and "mean_norm_M" in stats:
        cc.set_normalisation(None, torch.as_tensor(stats["mean_norm_M"])[idx])
        return
    if stats is not None and "mean_sq_norm_M" in stats and "mean_MD" in stats:
        mean = torch.as_tensor(stats["mean_MD"])[idx]
        centred = (torch.as_tensor(stats["mean_sq_norm_M"])[idx] - mean.pow(2).sum(-1)).clamp_min(0).sqrt()
        cc.set_normalisation(mean, centred)
        return
    sample, n = [], 0
    for x in _open_epoch(store, cfg, layer, models, epoch=0):
        sample.append(x)
        n += x.shape[0]
        if n >= 100 * cfg.batch_size or len(sample) >= 100:
            break
    if not sample:
        raise UserError("the activation store yields no full training batch; capture more tokens or lower batch_size")
    cc.fit_normalisation(torch.cat(sample))


def train_crosscoder(store, cfg: CrosscoderConfig, out_dir: str | Path, models: Sequence[int] = (0, 1),
                     layer: Optional[int] = None, progress: bool = True, max_steps: Optional[int] = None) -> Path:
    """Train (or resume) a crosscoder on ``store``'s activations of ``layer`` for model indices ``models``.

    ``max_steps`` stops the loop once the global step reaches it *without* finishing (as if killed; only the regular
    checkpoints persist): used to test resumption. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).exists() and not (out_dir / CKPT_DIR).exists():
        return out_dir
    if layer is None and hasattr(store, "layers"):
        if len(store.layers) != 1:
            raise UserError(f"the store holds layers {list(store.layers)}; pass layer=")
        layer = store.layers[0]

    dist = _init_dist()
    torch.manual_seed(cfg.seed)
    B = cfg.batch_size
    if B % dist.world:
        raise UserError(f"crosscoder.batch_size ({B}) must be divisible by the number of processes ({dist.world})")
    b_local = B // dist.world
    lo = dist.rank * b_local

    batches = _Batches(store, cfg, layer, models)
    first = batches.next()
    _, M, D = first.shape
    cc = build_crosscoder(cfg, D, M)
    _fit_normalisation(cc, store, cfg, layer, models)
    params = list(cc.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), fused=True)
    since_fired = torch.zeros(cfg.dict_size, dtype=torch.int64)
    step = 0
    resumed = _load_checkpoint(out_dir, cc, opt)
    if resumed is not None:
        state, since_fired = resumed
        step = int(state["step"])
        batches = _Batches(store, cfg, layer, models, epoch=int(state["epoch"]), batch=int(state["batch"]))
    else:
        batches = _Batches(store, cfg, layer, models)
    log_path = out_dir / LOG_FILE
    if dist.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, step)

    pbar = _Progress(progress and dist.rank == 0, cfg.steps, step)
    log_fh = open(log_path, "a", encoding="utf-8") if dist.rank == 0 else None
    k_aux_max = max(1, D // 2)
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            if max_steps is not None and step >= max_steps:
                return out_dir
            x_all = batches.next()
            x = cc.normalise(x_all[lo:lo + b_local])
            lr, k = lr_at(step, cfg), k_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            # GEMMs on every thread, the rest on one (robust to a shared CPU; see crosscoder.train_threads)
            with train_threads() if cc.arch == "batchtopk" else contextlib.nullcontext():
                use_aux = False
                if cc.arch == "batchtopk":   # no aux work at all while every latent fires (the common case early on)
                    dead = since_fired >= cfg.dead_tokens
                    n_dead = int(dead.sum())
                    use_aux = bool(n_dead) and cfg.aux_alpha > 0
                out = cc.train_forward(x, k, dist, keep_pre=use_aux)
                recon = cc.recon_loss(x, out["xhat"], B)
                extra = torch.zeros(())
                if cc.arch == "batchtopk":
                    if use_aux:
                        extra = cc.aux_loss(x, out, dead, min(k_aux_max, n_dead), dist)
                    loss = recon + cfg.aux_alpha * extra
                else:
                    extra = cc.sparsity_loss(out["f"], out["s"], B)
                    loss = recon + cfg.l1_coefficient * extra
                opt.zero_grad(set_to_none=True)   # backward then writes fresh gradients (no fill, no accumulate)
                loss.backward()
                if dist.enabled:
                    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
                    dist.sum_(flat)
                    off = 0
                    for p in params:
                        n = p.numel()
                        p.grad = flat[off:off + n].view_as(p).clone()
                        off += n
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
                opt.step()
                cc.project_()

            with torch.no_grad():
                f = out["f"].detach()
                fired = _fired_L(out, f, cc.dict_size)
                fired = dist.max_(fired.to(torch.int32))
                since_fired = torch.where(fired > 0, 0, since_fired + B)
                cc.update_threshold(out["thr"], step)
                rec = _step_record(x, out, f, recon, extra, loss, dist, B)
            step += 1
            if dist.rank == 0:
                rec.update(step=step - 1, lr=lr, k=k, threshold=float(cc.threshold),
                           dead_fraction=float((since_fired >= cfg.dead_tokens).float().mean()),
                           topk_candidates=int(out["topk_candidates"]), epoch=batches.epoch)
                log_fh.write(json.dumps(rec) + "\n")
                pbar.update(step, rec)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                if dist.rank == 0:
                    log_fh.flush()
                    _save_checkpoint(out_dir, cc, opt, since_fired,
                                     {"step": step, "epoch": batches.epoch, "batch": batches.batch})
                _barrier(dist)
    finally:
        pbar.close()
        if log_fh is not None:
            log_fh.close()

    if dist.rank == 0:
        cc.save(out_dir, metadata={"models": list(models), "layer": layer, "steps": cfg.steps,
                                   "tokens": cfg.steps * B, "world_size": dist.world,
                                   "train_seconds": round(time.perf_counter() - t0, 3)})
        shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)
        if progress:
            _print_done(out_dir, log_path)
    _barrier(dist)
    return out_dir


def _fired_L(out: dict[str, Any], f: torch.Tensor, L: int) -> torch.Tensor:
    """Bool [L]: latents active on some token of this rank's batch (from the selected indices when available)."""
    sel = out.get("sel")
    if sel is None:
        return (f > 0).any(0)
    fired = torch.zeros(L, dtype=torch.bool)
    fired[sel % L] = True
    return fired


def _step_record(x, out, f, recon, extra, loss, dist: DistCtx, B: int) -> dict[str, Any]:
    """Batch metrics: effective k (mean active latents per token), EV per model (1 − Σ‖x−x̂‖² / Σ‖x−x̄‖²)."""
    xh = out["xhat"].detach()
    sel = out.get("sel")
    n_active = (f > 0).sum().to(torch.float64) if sel is None else torch.tensor(float(sel.numel()), dtype=torch.float64)
    err = (x - xh).pow(2).sum(dim=(0, 2)).to(torch.float64)
    xs = x.sum(0).to(torch.float64)
    x2 = x.pow(2).sum(dim=(0, 2)).to(torch.float64)
    vec = dist.sum_(torch.cat([n_active.reshape(1), err, x2, xs.reshape(-1),
                               torch.stack([recon.detach(), extra.detach(), loss.detach()]).to(torch.float64)]))
    M = x.shape[1]
    n_active, err, x2 = vec[0], vec[1:1 + M], vec[1 + M:1 + 2 * M]
    xs = vec[1 + 2 * M:1 + 2 * M + xs.numel()].reshape(M, -1)
    recon_v, extra_v, loss_v = vec[-3:].tolist()
    var = x2 - xs.pow(2).sum(-1) / B
    ev = (1 - err / var.clamp_min(1e-12)).tolist()
    return {"loss": loss_v, "recon": recon_v, "aux_or_sparsity": extra_v, "l0": float(n_active) / B, "ev": ev}


def _init_dist() -> DistCtx:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_available():
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        return DistCtx(True)
    return DistCtx(False)


def _barrier(dist: DistCtx) -> None:
    if dist.enabled:
        torch.distributed.barrier()


class _Progress:
    def __init__(self, enabled: bool, total: int, start: int):
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]train crosscoder"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=start, info="")
        self._last = 0.0

    def update(self, step: int, rec: dict) -> None:
        if self.p is None:
            return
        now = time.perf_counter()
        if now - self._last < 0.25 and step < self.p.tasks[0].total:
            return
        self._last = now
        ev = " ".join(f"{v:.3f}" for v in rec["ev"])
        self.p.update(self.task, completed=step,
                      info=f"loss {rec['loss']:.4g}  L0 {rec['l0']:.1f}  EV {ev}  dead {rec['dead_fraction']:.2f}")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


def _print_done(out_dir: Path, log_path: Path) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[green]crosscoder written[/]: {out_dir}  (log: {log_path.name})")
