"""The ``controls``, ``examples``, ``quality`` and ``causal`` stages of ``lm-diff run``, each keyed on exactly the
upstream stages and config sections it reads (none of them reads ``stats.permutations``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from lm_diff.capture.store import ActivationStore
from lm_diff.categorize.grounding import store_prompt_max_acts
from lm_diff.config import RunConfig
from lm_diff.crosscoder.model import CrossCoder
from lm_diff.diff.controls import identity_control_summary, seed_reproducibility
from lm_diff.diff.examples import collect_examples
from lm_diff.diff.logits import latent_logits
from lm_diff.diff.quality import quality_metrics
from lm_diff.diff.scaling import latent_scaling
from lm_diff.diff.table import latent_table
from lm_diff.io import write_json, write_text
from lm_diff.link.causal import causal_check
from lm_diff.models import model_sources
from lm_diff.run.analysis import CrosscoderDiff, Diffs, doc_index, set_triples, sets, stage_names
from lm_diff.run.stages import Stages
from lm_diff.schema import write_table

CARD_QUANTILES = 4
"""Quantile bins of the activating tokens sampled (one window each) for every latent, beside the top windows."""
CARD_LOGITS = 10
"""Boosted and suppressed output tokens kept per latent and model."""


def selection_counts(d: CrosscoderDiff) -> dict:
    """Counts per selection stage of one crosscoder: latents, live, dead; per direction the Δ-threshold latents
    (live), the specific ones after latent scaling, and how many latent scaling removed."""
    t, s = d.table, d.scaling
    live = ~t["dead"].astype(bool)
    out = {"latents": int(len(t)), "live": int(live.sum()), "dead": int((~live).sum())}
    for direction, tag in (("B", "B-only"), ("A", "A-only")):
        cand = s[(s["direction"] == direction) & (s["role"] != "baseline")]
        out[f"{direction}_delta_only"] = int(((t["tag"] == tag) & live).sum())
        out[f"{direction}_specific"] = int(cand["specific"].astype(bool).sum())
        out[f"{direction}_removed_by_scaling"] = out[f"{direction}_delta_only"] - out[f"{direction}_specific"]
    return out


def _repro_summary(rep: pd.DataFrame, d: CrosscoderDiff) -> dict:
    cols = [c for c in rep.columns if c not in ("latent",)]
    out = {"mean_reproducibility": float(rep["reproducibility"].mean()) if "reproducibility" in rep else None}
    if "reproducibility" in rep:
        r = rep.set_index("latent")["reproducibility"] if "latent" in rep else rep["reproducibility"]
        for direction in ("B", "A"):
            ids = d.specific(direction)
            out[f"{direction}_specific_reproducibility"] = float(r.reindex(ids).mean()) if ids else None
    out["columns"] = cols
    return out


def controls_stage(cfg: RunConfig, stages: Stages, capture_dir: Path, layer: int, diffs: Diffs,
                   identity: Optional[Path], a_index: int) -> Path:
    """Seed reproducibility, selection counts and the identity control (the per-seed shifts live in ``shift``)."""
    seeds = list(cfg.controls.seeds)
    ctl = {k: v for k, v in dataclasses.asdict(cfg.controls).items() if k != "causal"}
    key = {"diffs": stage_names(diffs, seeds, grounding=False), "identity": identity.parent.name if identity else None,
           "capture": capture_dir.name, "layer": layer, "controls": ctl, "diff": dataclasses.asdict(cfg.diff),
           "version": 1}

    def fn(d: Path) -> dict:
        controls: dict[str, Any] = {}
        main = seeds[0]
        if len(seeds) > 1:
            for name, by_seed in diffs.items():
                rep = seed_reproducibility([by_seed[s].cc for s in seeds], seeds=seeds)
                controls.setdefault("reproducibility", {})[name] = _repro_summary(rep, by_seed[main])
        controls["selection"] = {name: selection_counts(by_seed[main]) for name, by_seed in diffs.items()}
        if identity is not None:
            store = ActivationStore(capture_dir / "store")
            icc = CrossCoder.load(identity, map_location=cfg.crosscoder.device)
            pair = (a_index, a_index)
            itable = latent_table(icc, store, layer, pair, cfg.diff)
            iscaling = latent_scaling(icc, store, layer, pair, cfg=cfg.diff, table=itable, tokens=cfg.diff.scaling_tokens)
            controls["identity"] = identity_control_summary(itable, iscaling, cfg.controls)
        write_json(d / "controls.json", controls)
        return {}

    d, _ = stages.run("controls", key, fn, label="controls (seeds, selection, identity)")
    return d


def examples_stage(cfg: RunConfig, stages: Stages, capture_dir: Path, layer: int, diffs: Diffs, pair: Any = None,
                   loaded: Optional[dict] = None) -> Path:
    """Latent-browser data of every selected latent (examples with per-token activations, histogram, decoder norms,
    output tokens through each model's unembedding) and their per-document activations on the benchmark prompts."""
    seed = cfg.controls.seeds[0]
    key = {"diffs": stage_names(diffs, [seed], grounding=False), "design": cfg.design, "capture": capture_dir.name, "layer": layer,
           "cards": cfg.report.card_examples, "diff": dataclasses.asdict(cfg.diff),
           "models": pair.fingerprints if pair is not None else None, "version": 2}

    def fn(d: Path) -> dict:
        store = ActivationStore(capture_dir / "store")
        triples = set_triples(cfg, diffs, seed)
        doc_acts = doc_activations(store, layer, doc_index(capture_dir), triples)
        write_table(doc_acts, d, "doc_activations")
        write_examples(cfg, store, layer, d, triples, pair, loaded)
        return {"doc_activations": int(len(doc_acts))}

    d, _ = stages.run("examples", key, fn, label="examples and benchmark-document activations")
    return d


def doc_activations(store: Any, layer: int, index: list[dict], triples) -> pd.DataFrame:
    bench = np.array([i for i, r in enumerate(index) if r["kind"] == "bench"], dtype=np.int64)
    frames = []
    for d, ids, set_name, off in triples:
        if not ids or not len(bench):
            continue
        got, acts = store_prompt_max_acts(d.cc, store, layer, d.models, doc_ids=bench, latents=ids)
        P, L = acts.shape
        frames.append(pd.DataFrame({
            "task": np.repeat([index[int(i)]["task"] for i in got], L),
            "doc_id": np.repeat([int(index[int(i)]["doc_id"]) for i in got], L),
            "latent": np.tile(np.asarray(ids) + off, P),
            "set": set_name,
            "act": acts.reshape(-1),
        }))
    if not frames:
        return pd.DataFrame(columns=["task", "doc_id", "latent", "set", "act"])
    return pd.concat(frames, ignore_index=True)


def _logits(cfg: RunConfig, pair: Any, triples, loaded: dict, tokenizer: Any) -> dict:
    """{(set, latent in the set's crosscoder): {role: {pos, neg}}}: each model loaded once (or taken from ``loaded``),
    used for every crosscoder slot it holds, and dropped before the next one is loaded."""
    need: dict[int, list] = {}
    for d, ids, set_name, _ in triples:
        for slot, m_index in enumerate(d.models):
            if ids:
                need.setdefault(int(m_index), []).append((d, ids, set_name, slot))
    out: dict = {}
    sources = model_sources(cfg, pair)
    for m_index, uses in need.items():
        have = loaded.get("models")
        model = have[m_index] if have else sources[m_index].load()
        role = pair.names[m_index]
        with torch.no_grad():
            for d, ids, set_name, slot in uses:
                for j, lg in latent_logits(d.cc.W_dec_LMD, ids, slot, model, tokenizer, CARD_LOGITS).items():
                    out.setdefault((set_name, j), {})[role] = lg
        del model
    return out


def _window(w: dict) -> dict:
    return {"kind": w.get("kind"), "quantile": w.get("quantile"), "text": w.get("text", ""),
            "act": round(float(w.get("max_act", 0.0)), 4), "tokens": list(w.get("tokens") or []),
            "acts": [round(float(a), 3) for a in w.get("acts") or []]}


def write_examples(cfg: RunConfig, store: Any, layer: int, out: Path, triples, pair: Any = None,
                   loaded: Optional[dict] = None) -> None:
    """examples.jsonl, one line per selected latent of S and T (docs/report_schema.md "examples.jsonl"): activation
    statistics and histogram, decoder norms per model, top boosted / suppressed output tokens per model (needs
    ``pair``), and the top and quantile-sampled windows with the latent's activation on every token."""
    lines = []
    n_top = cfg.report.card_examples
    logits = _logits(cfg, pair, triples, loaded if loaded is not None else {}, store.tokenizer) if pair is not None else {}
    for d, ids, set_name, off in triples:
        if not ids:
            continue
        t = d.table.set_index("latent")
        ex = collect_examples(d.cc, store, layer, d.models, ids, store.tokenizer, cfg.diff, n_top=n_top,
                              n_quantiles=CARD_QUANTILES, per_quantile=1, n_random=0, reservoir=1000)
        norms = d.cc.decoder_norms().detach().cpu()
        roles = [pair.names[m] for m in d.models] if pair is not None else [str(m) for m in d.models]
        for j in ids:
            e = ex.get(j) or {}
            wins = e.get("activating", [])
            wins = [w for w in wins if w.get("kind") == "top"] + [w for w in wins if w.get("kind") == "quantile"]
            lines.append(json.dumps({
                "latent": int(j) + off, "set": set_name, "max_act": e.get("max_act"), "n_active": e.get("n_active"),
                "n_tokens": e.get("n_tokens"), "act_hist": e.get("act_hist"),
                "decoder_norms": {r: round(float(norms[j, s]), 5) for s, r in enumerate(roles)},
                "mean_act": float(t.at[j, "mean_act"]) if "mean_act" in t.columns else None,
                # a dedicated latent has no decoder direction in one model: no output tokens there
                "logits": {r: lg for r, lg in (logits.get((set_name, int(j))) or {}).items()
                           if float(norms[j, roles.index(r)]) > 0} if pair is not None else {},
                "examples": [_window(w) for w in wins]}, ensure_ascii=False))
    write_text(out / "examples.jsonl", "\n".join(lines) + ("\n" if lines else ""))


def quality_stage(cfg: RunConfig, pair: Any, stages: Stages, capture_dir: Path, layer: int, diffs: Diffs,
                  loaded: dict) -> Path:
    """Reconstruction on held-out tokens and spliced loss of the first seed's crosscoders."""
    seed = cfg.controls.seeds[0]
    key = {"diffs": stage_names(diffs, [seed], grounding=False), "capture": capture_dir.name, "layer": layer,
           "models": pair.fingerprints, "dtype": cfg.models.dtype, "version": 1}

    def fn(d: Path) -> dict:
        store = ActivationStore(capture_dir / "store")
        write_json(d / "quality.json", quality_metrics(cfg, pair, store, layer, diffs, seed, doc_index(capture_dir), loaded))
        return {}

    d, _ = stages.run("quality", key, fn, label="crosscoder quality (reconstruction, spliced loss)")
    return d


def causal_stage(cfg: RunConfig, pair: Any, stages: Stages, layer: int, diffs: Diffs, evals: dict[str, Path],
                 loaded: dict) -> Optional[Path]:
    """Ablation of each category's fine-tune-specific latents in B, against matched random latents."""
    if not cfg.controls.causal:
        return None
    seed = cfg.controls.seeds[0]
    S, s_ids, _, _ = sets(cfg, diffs, seed)
    b = dataclasses.asdict(cfg.benchmarks)
    key = {"S": [S.diff_dir.name, S.grounding_dir.name], "layer": layer, "models": pair.fingerprints,
           "evals": {r: p.parent.name for r, p in evals.items()}, "benchmarks": b, "seed": cfg.stats.seed,
           "dtype": cfg.models.dtype, "version": 1}

    def fn(d: Path) -> dict:
        write_json(d / "causal.json", causal_check(cfg, pair, S, s_ids, evals, loaded, layer))
        return {}

    d, _ = stages.run("causal", key, fn, label="causal check (ablations)")
    return d
