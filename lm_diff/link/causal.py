"""Causal check (methods B8): ablate a category's fine-tune-specific latents in B at layer ℓ while re-scoring that
category's benchmark items, and compare the fraction of the A→B gap closed with a matched random-latent control
(same number of latents, drawn from the same firing-frequency bins among non-selected live latents).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lm_diff import console
from lm_diff.bench.evaluate import run_lm_eval
from lm_diff.bench.join import load_run
from lm_diff.bench.suites import bench_task_manager, task_categories
from lm_diff.categorize.grounding import latent_labels
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import RunConfig
from lm_diff.link.association import ablate_latents_hook, causal_fraction
from lm_diff.models import load_models


def task_scores(run_dir: Path, tasks: list[str]) -> Optional[float]:
    """Document-weighted mean of the primary metric (as a fraction) over ``tasks`` of an lm-eval run."""
    run = load_run(run_dir)
    total = weight = 0.0
    for t in tasks:
        if t not in run.results.get("results", {}):
            continue
        metric = run.metrics.get(t) if isinstance(run.metrics, dict) else None
        res = run.results["results"][t]
        key = f"{metric},none" if metric and f"{metric},none" in res else next(
            (k for k in res if k.endswith(",none") and "stderr" not in k and isinstance(res[k], (int, float))), None)
        if key is None:
            continue
        n = float(run.results.get("n-samples", {}).get(t, {}).get("effective", 1) or 1)
        total += float(res[key]) * n
        weight += n
    return total / weight if weight else None


def matched_random(table: pd.DataFrame, chosen: list[int], exclude: set[int], seed: int, bins: int = 5) -> list[int]:
    """Random latents matching ``chosen`` in count and firing-frequency quantile bin (live latents not in ``exclude``)."""
    rng = np.random.default_rng(seed)
    live = table[~table["dead"].astype(bool) & ~table["latent"].isin(exclude)]
    if live.empty:
        return []
    edges = np.quantile(table.loc[~table["dead"].astype(bool), "freq"], np.linspace(0, 1, bins + 1))
    binned = np.clip(np.searchsorted(edges, live["freq"].to_numpy(), side="right") - 1, 0, bins - 1)
    freq = table.set_index("latent")["freq"]
    out: list[int] = []
    for j in chosen:
        b = int(np.clip(np.searchsorted(edges, freq.get(j, 0.0), side="right") - 1, 0, bins - 1))
        pool = [int(x) for x in live["latent"].to_numpy()[binned == b] if int(x) not in out]
        if not pool:
            pool = [int(x) for x in live["latent"] if int(x) not in out]
        if pool:
            out.append(int(rng.choice(pool)))
    return out


def _rescore(cfg: RunConfig, model: Any, tokenizer: Any, tasks: list[str], cc: Any, latents: list[int], model_index: int,
             layer: int, partners: dict, work: Path) -> Optional[float]:
    b = cfg.benchmarks
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415 - lm-eval's HF model pulls in transformers; only causal checks need it

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=b.batch_size, logits_cache=False)
    with ablate_latents_hook(cc, latents, model_index, layer, model=model, partner_models=partners):
        run_lm_eval("ablated", tasks, work, limit=b.limit, num_fewshot=b.num_fewshot, batch_size=b.batch_size,
                    apply_chat_template=b.apply_chat_template,
                    include_path=[str(cfg.resolve_path(p)) for p in b.include_path], model=lm, env_info=False,
                    confirm_run_unsafe_code=b.confirm_run_unsafe_code, fewshot_as_multiturn=b.fewshot_as_multiturn,
                    system_instruction=b.system_instruction)
    return task_scores(work, tasks)


def causal_check(cfg: RunConfig, pair: Any, S: Any, s_ids: list[int], evals: dict[str, Path], loaded: dict,
                 layer: int) -> dict:
    """{category: {score_A, score_B, score_patched, score_random, mode, n_latents, tasks}} for every category with
    fine-tune-specific latents and scored tasks."""
    con = console.out()
    if not s_ids:
        return {}
    if "models" not in loaded:
        loaded["models"], loaded["tokenizer"] = load_models(cfg, pair)
    models, tok = loaded["models"], loaded["tokenizer"]
    run_a = load_run(evals["A"])
    b = cfg.benchmarks
    tcats = task_categories(list(run_a.results.get("configs", {}).keys()), bench_task_manager(cfg),
                            overrides=b.task_categories, results=run_a.results, taxonomy=get_taxonomy(cfg))
    labels = latent_labels(S.assign, s_ids)
    by_cat: dict[str, list[int]] = {}
    for j, cats in labels.items():
        for c in cats:
            if c != "unassigned":
                by_cat.setdefault(c, []).append(j)
    i_b = S.models[1]
    partners = {0: models[S.models[0]]}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (c, lat) in enumerate(sorted(by_cat.items())):
            tasks = sorted(t for t, tc in tcats.items() if tc == c)
            if not tasks:
                continue
            con.print(f"causal check: ablating {len(lat)} fine-tune-specific {c} latents in B on {', '.join(tasks)}")
            score_a, score_b = task_scores(evals["A"], tasks), task_scores(evals["B"], tasks)
            patched = _rescore(cfg, models[i_b], tok, tasks, S.cc, lat, 1, layer, partners, Path(tmp) / f"{c}-patched")
            rand = matched_random(S.table, lat, set(s_ids), seed=cfg.stats.seed + k)
            random_score = _rescore(cfg, models[i_b], tok, tasks, S.cc, rand, 1, layer, partners, Path(tmp) / f"{c}-random")
            res = {"score_A": score_a, "score_B": score_b, "score_patched": patched, "score_random": random_score,
                   "mode": "ablate_b", "n_latents": len(lat), "tasks": tasks, "random_latents": rand}
            if None not in (score_a, score_b, patched):
                res.update(causal_fraction(score_a, score_b, patched, random_score, mode="ablate_b"))
            out[c] = json.loads(json.dumps(res, default=float))
    return out
