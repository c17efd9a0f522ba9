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

Device and precision: everything runs on ``cfg.device`` (``crosscoder.device``, by default ``models.device``; a
config built by hand without a run means the CPU). The normalisation statistics are fitted on the CPU, then the model
moves to the device; checkpoints load straight onto it. ``cfg.precision`` ``auto`` gives the five GEMMs bf16 operands
on CUDA (fp32 accumulation and results); parameters, Adam moments, selection, losses and statistics stay fp32. On the
CPU (fp32) the arithmetic is the historical one, bit for bit.

Non-finite values: a NaN/inf in the store's normalisation statistics, in a training batch or in the loss stops the
stage with one UserError naming the models, the layer and the step, before the update: no crosscoder is written and
the last regular checkpoint (all finite) is left as it was.

Data parallel (torchrun): every rank walks the same global batch order and takes its own contiguous slice of B/N rows
at the source (``iter_batches(rows=(lo, hi))`` of the store and the stream: only those rows are gathered from the
shuffle buffer, converted to fp32 and copied to the rank's device; each rank still reads every shard, which the
shuffle needs; a source without ``rows`` is sliced after reading).
With CUDA each rank takes ``cuda:LOCAL_RANK`` and the group uses NCCL; on other devices gloo. BatchTopK selects the
top k·B over the *global* batch (candidate values are all-gathered), losses are normalised by the global batch size
and gradients are summed with one all-reduce, so N processes compute the same update as one up to floating-point
summation order (tests/test_train.py: 2 gloo processes match 1 within 1e-4). Rank 0 writes every file. Commands::

    lm-diff capture CONFIG --out RUN_DIR        # first: one process captures, the ranks then share the store
    torchrun --standalone --nproc_per_node 4 -m lm_diff train CONFIG --out RUN_DIR --set crosscoder.device=cuda
    torchrun --standalone --nproc_per_node 2 -m lm_diff train CONFIG --out RUN_DIR --set crosscoder.device=cpu
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from lm_diff.config import CrosscoderConfig
from lm_diff.console import err
from lm_diff.console import progress as progress_bar
from lm_diff.crosscoder.checkpoint import CKPT_DIR, load_checkpoint, save_checkpoint, truncate_log
from lm_diff.crosscoder.dist import DistCtx, barrier, init_dist
from lm_diff.crosscoder.model import CONFIG_FILE, CrossCoder, train_threads
from lm_diff.errors import UserError

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


def _open_epoch(store, cfg: CrosscoderConfig, layer, models, epoch: int,
                rows: tuple[int, int]) -> Iterator[torch.Tensor]:
    """One epoch of this rank's rows ``rows`` of every full global batch."""
    kwargs: dict[str, Any] = dict(layer=layer, models=tuple(models), split="train", shuffle_buffer=cfg.shuffle_buffer,
                                  seed=cfg.seed + epoch)
    try:
        params = inspect.signature(store.iter_batches).parameters
    except (TypeError, ValueError):
        params = {}
    if "drop_last" in params:
        kwargs["drop_last"] = True
    at_source = "rows" in params and "drop_last" in params and rows != (0, cfg.batch_size)
    if at_source:
        kwargs["rows"] = rows
    for item in store.iter_batches(cfg.batch_size, **kwargs):
        x = _batch_tensor(item)
        if at_source and x.shape[0] == rows[1] - rows[0]:
            yield x
        elif not at_source and x.shape[0] == cfg.batch_size:
            yield x[rows[0]:rows[1]]


class _Batches:
    """Endless stream of full global batches with a resumable position (epoch, batch index within the epoch)."""

    def __init__(self, store, cfg, layer, models, epoch: int = 0, batch: int = 0, rows: Optional[tuple[int, int]] = None):
        self.store, self.cfg, self.layer, self.models = store, cfg, layer, models
        self.rows = rows or (0, cfg.batch_size)
        self.epoch, self.batch = epoch, batch
        self._it = self._open(skip=batch)

    def _open(self, skip: int):
        it = _open_epoch(self.store, self.cfg, self.layer, self.models, self.epoch, self.rows)
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
        with contextlib.suppress(OSError, KeyError, ValueError, UserError):
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


def resolve_precision(cfg: CrosscoderConfig, device: torch.device) -> Optional[torch.dtype]:
    """GEMM operand dtype for ``crosscoder.precision``: ``auto`` = bf16 on CUDA, fp32 (None) elsewhere."""
    p = getattr(cfg, "precision", "auto")
    if p == "bfloat16" or (p == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def train_crosscoder(store, cfg: CrosscoderConfig, out_dir: str | Path, models: Sequence[int] = (0, 1),
                     layer: Optional[int] = None, progress: bool = True, max_steps: Optional[int] = None) -> Path:
    """Train (or resume) a crosscoder on ``store``'s activations of ``layer`` for model indices ``models``.

    Runs on ``cfg.device`` (under torchrun with CUDA: ``cuda:LOCAL_RANK``). ``max_steps`` stops the loop once the
    global step reaches it *without* finishing (as if killed; only the regular checkpoints persist): used to test
    resumption. Returns ``out_dir``. A non-finite training batch or loss stops with a UserError before the update.
    """
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).exists() and not (out_dir / CKPT_DIR).exists():
        return out_dir
    if layer is None and hasattr(store, "layers"):
        if len(store.layers) != 1:
            raise UserError(f"the store holds layers {list(store.layers)}; pass layer=")
        layer = store.layers[0]

    dist, dev = init_dist(getattr(cfg, "device", "cpu"))
    torch.manual_seed(cfg.seed)
    B = cfg.batch_size
    if B % dist.world:
        raise UserError(f"crosscoder.batch_size ({B}) must be divisible by the number of processes ({dist.world})")
    b_local = B // dist.world
    rows = (dist.rank * b_local, (dist.rank + 1) * b_local)   # this rank's slice of every global batch

    batches = _Batches(store, cfg, layer, models, rows=rows)
    first = batches.next()
    _, M, D = first.shape
    cc = build_crosscoder(cfg, D, M)
    _fit_normalisation(cc, store, cfg, layer, models)   # on the CPU: the same statistics whatever the device
    where = f"crosscoder training (models {list(models)}, layer {layer})"
    if not (bool(torch.isfinite(cc.norm_mean_MD).all()) and bool(torch.isfinite(cc.norm_scale_M).all())
            and bool((cc.norm_scale_M > 0).all())):   # an infinite mean norm gives a scale of 0
        raise UserError(f"{where}: the activations' normalisation statistics are not finite (NaN or infinite "
                        "activations in the store); recapture the activations, e.g. with capture.dtype: float32")
    cc = cc.to(dev)
    cc.gemm_dtype = resolve_precision(cfg, dev)
    params = list(cc.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), fused=True)
    since_fired = torch.zeros(cfg.dict_size, dtype=torch.int64, device=dev)
    step = 0
    resumed = load_checkpoint(out_dir, cc, opt, dev)
    if resumed is not None:
        state, since_fired = resumed
        step = int(state["step"])
        batches = _Batches(store, cfg, layer, models, epoch=int(state["epoch"]), batch=int(state["batch"]), rows=rows)
    else:
        batches = _Batches(store, cfg, layer, models, rows=rows)
    log_path = out_dir / LOG_FILE
    if dist.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(log_path, step)

    log_fh = open(log_path, "a", encoding="utf-8") if dist.rank == 0 else None
    k_aux_max = max(1, D // 2)
    t0 = time.perf_counter()
    try:
        with progress_bar("train crosscoder", total=cfg.steps, enabled=progress and dist.rank == 0,
                          start=step) as pbar:
            while step < cfg.steps:
                if max_steps is not None and step >= max_steps:
                    return out_dir
                # this rank's rows of the global batch (sliced at the source), alone copied to its device
                x = cc.normalise(batches.next().to(dev, non_blocking=True))
                out, recon, extra, loss, lr, k = _step(cc, opt, params, x, step, since_fired, cfg, dist, k_aux_max,
                                                       where)
                with torch.no_grad():
                    f = out["f"].detach()
                    fired = dist.max_(_fired_L(out, f, cc.dict_size).to(torch.int32))
                    since_fired = torch.where(fired > 0, 0, since_fired + B)
                    cc.update_threshold(out["thr"], step)
                    rec = _step_record(x, out, f, recon, extra, loss, dist, B)
                step += 1
                if dist.rank == 0:
                    rec.update(step=step - 1, lr=lr, k=k, threshold=float(cc.threshold),
                               dead_fraction=float((since_fired >= cfg.dead_tokens).float().mean()),
                               topk_candidates=int(out["topk_candidates"]), epoch=batches.epoch)
                    log_fh.write(json.dumps(rec) + "\n")
                    ev = " ".join(f"{v:.3f}" for v in rec["ev"])
                    pbar.update(step, f"loss {rec['loss']:.4g}  L0 {rec['l0']:.1f}  EV {ev}  "
                                      f"dead {rec['dead_fraction']:.2f}")
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    if dist.rank == 0:
                        log_fh.flush()
                        save_checkpoint(out_dir, cc, opt, since_fired,
                                        {"step": step, "epoch": batches.epoch, "batch": batches.batch})
                    barrier(dist)
    finally:
        if log_fh is not None:
            log_fh.close()

    if dist.rank == 0:
        cc.save(out_dir, metadata={"models": list(models), "layer": layer, "steps": cfg.steps,
                                   "tokens": cfg.steps * B, "world_size": dist.world,
                                   "train_seconds": round(time.perf_counter() - t0, 3)})
        shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)
        if progress:
            err().print(f"[green]crosscoder written[/]: {out_dir}  (log: {log_path.name})")
    barrier(dist)
    return out_dir


def _step(cc: CrossCoder, opt, params, x, step: int, since_fired, cfg: CrosscoderConfig, dist: DistCtx,
          k_aux_max: int, where: str):
    """One optimisation step on this rank's rows ``x`` (normalised); stops before the update on a non-finite batch
    or loss (checked on every rank, agreed by one all-reduce)."""
    B = cfg.batch_size
    lr, k = lr_at(step, cfg), k_at(step, cfg)
    for g in opt.param_groups:
        g["lr"] = lr
    # GEMMs on every thread, the rest on one (robust to a shared CPU; see crosscoder.train_threads)
    with train_threads():
        use_aux, dead, k_aux = False, None, 0
        if cc.arch == "batchtopk":   # no aux work at all while every latent fires (the common case early on)
            dead = since_fired >= cfg.dead_tokens
            n_dead = int(dead.sum())
            use_aux = bool(n_dead) and cfg.aux_alpha > 0
            k_aux = min(k_aux_max, n_dead) if use_aux else 0
        _finite_or_stop(x, dist, f"{where}: non-finite activations in the training batch at step {step}")
        out = cc.train_forward(x, k, dist, keep_pre=use_aux, dead_L=dead if use_aux else None, k_aux=k_aux)
        recon = cc.recon_loss(x, out["xhat"], B)
        extra = x.new_zeros(())
        if cc.arch == "batchtopk":
            if use_aux:
                extra = cc.aux_loss(x, out, dead, k_aux, dist)
            loss = recon + cfg.aux_alpha * extra
        else:
            extra = out["sparsity"]   # = cc.sparsity_loss(f, s, B), computed inside the L1 encoder kernel
            loss = recon + cfg.l1_coefficient * extra
        _finite_or_stop(loss.detach(), dist, f"{where}: non-finite loss at step {step}")
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
    return out, recon, extra, loss, lr, k


def _finite_or_stop(t: torch.Tensor, dist: DistCtx, what: str) -> None:
    """Raise one UserError (on every rank: the flag is all-reduced) when ``t`` holds a NaN or an infinity."""
    bad = dist.max_((~torch.isfinite(t).all()).to(torch.int32).reshape(1))
    if bool(bad[0]):
        raise UserError(f"{what}; training stopped before the update (no crosscoder written; the last regular "
                        "checkpoint, if any, is intact). Check the activation store (recapture it, e.g. with "
                        "capture.dtype: float32) or lower crosscoder.lr")


def _fired_L(out: dict[str, Any], f: torch.Tensor, L: int) -> torch.Tensor:
    """Bool [L]: latents active on some token of this rank's batch (from the selected indices when available)."""
    sel = out.get("sel")
    if sel is None:
        return (f > 0).any(0)
    fired = torch.zeros(L, dtype=torch.bool, device=f.device)
    fired[sel % L] = True
    return fired


def _step_record(x, out, f, recon, extra, loss, dist: DistCtx, B: int) -> dict[str, Any]:
    """Batch metrics: effective k (mean active latents per token), EV per model (1 − Σ‖x−x̂‖² / Σ‖x−x̄‖²)."""
    acc = torch.float32 if x.device.type == "mps" else torch.float64   # MPS has no float64
    xh = out["xhat"].detach()
    sel = out.get("sel")
    n_active = (f > 0).sum().to(acc) if sel is None else x.new_tensor(float(sel.numel()), dtype=acc)
    err_M = (x - xh).pow(2).sum(dim=(0, 2)).to(acc)
    xs = x.sum(0).to(acc)
    x2 = x.pow(2).sum(dim=(0, 2)).to(acc)
    vec = dist.sum_(torch.cat([n_active.reshape(1), err_M, x2, xs.reshape(-1),
                               torch.stack([recon.detach(), extra.detach(), loss.detach()]).to(acc)]))
    M = x.shape[1]
    n_active, err_M, x2 = vec[0], vec[1:1 + M], vec[1 + M:1 + 2 * M]
    xs = vec[1 + 2 * M:1 + 2 * M + xs.numel()].reshape(M, -1)
    recon_v, extra_v, loss_v = vec[-3:].tolist()
    var = x2 - xs.pow(2).sum(-1) / B
    ev = (1 - err_M / var.clamp_min(1e-12)).tolist()
    return {"loss": loss_v, "recon": recon_v, "aux_or_sparsity": extra_v, "l0": float(n_active) / B, "ev": ev}
