"""Candidate headline statistics for the category shift, side by side on one finished run (issue 15, item 3).

Reads a run folder's diff and grounding stages (every crosscoder seed) and prints, per category, the pooled cluster
permutation test (``categorize.shift.pooled_category_shift``) with three ways of labelling latents:

- ``hard``: the grounding stage's assignments (the pipeline's default; a latent may carry several categories);
- ``soft``: every latent weighted by its evidence, π_c ∝ max(0, 2·AUROC_rest − 1) where AUROC vs neutral ≥ 0.5;
- ``top1``: the single best category with AUROC vs neutral and vs the rest both > 0.6;

``enrich`` is the pipeline's headline, ``categorize.change.category_change`` itself: is category c over-represented
among the model-specific latents (S ∪ T, both directions) against the live shared latents (0.1 < Δ < 0.9)? It has no sign (a fine-tune that learns a
broken format gains B-specific latents on that format's prompts), so it says which categories the fine-tune changed,
not which way;

and a fourth statistic that labels nothing: ``affinity``, a Mann–Whitney test of S against T on each latent's AUROC
of category prompts vs the other categories' prompts (latents as units, seeds pooled without clustering, so its p is
optimistic). Prints one JSON object on its last line.

    python benchmarks/bench_statistics.py RUN_DIR [--permutations 4000] [--seeds 0,1,2,3,4,5] [--modes hard]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm_diff.categorize.change import category_change, live_shared  # noqa: E402
from lm_diff.categorize.shift import pooled_category_shift  # noqa: E402
from lm_diff.categorize.taxonomy import get_taxonomy  # noqa: E402
from lm_diff.config import StatsConfig  # noqa: E402
from lm_diff.crosscoder.model import CrossCoder  # noqa: E402
from lm_diff.diff.controls import seed_clusters  # noqa: E402
from lm_diff.schema import CATEGORY, CHANGE_P, CHANGE_Q, CHANGE_RATIO, N_SHARED, N_SPECIFIC  # noqa: E402


def seed_stages(run: Path) -> list[tuple[int, Path, Path, Path]]:
    """(seed, diff stage, grounding stage, crosscoder folder) for every grounded A-B crosscoder in the run."""
    out = {}
    for g in sorted((run / "stages").glob("grounding-*"), key=lambda p: (p / "DONE.json").stat().st_mtime):
        diff = run / "stages" / json.loads((g / "KEY.json").read_text())["diff"]
        key = json.loads((diff / "KEY.json").read_text())
        if key.get("name", "AB") != "AB":
            continue
        # a folder reused across configurations holds several stages per seed: the latest one is the run's
        out[int(key["seed"])] = (int(key["seed"]), diff, g, run / "stages" / key["crosscoder"] / "crosscoder")
    return sorted(out.values())


def labels(g: pd.DataFrame, latents: list[int], mode: str) -> list:
    by = {j: d for j, d in g[g["latent"].isin(latents)].groupby("latent")}
    out: list = []
    for j in latents:
        d = by[j]
        if mode == "hard":
            got = d[d["assigned"].astype(bool)]["category"].tolist()
            out.append(got or "unassigned")
        elif mode == "soft":
            w = np.clip(2 * d["auroc_rest"].to_numpy() - 1, 0, 1) * (d["auroc"].to_numpy() >= 0.5)
            out.append({c: float(x / max(w.sum(), 1)) for c, x in zip(d["category"], w) if x > 0})
        else:
            d = d[(d["auroc_rest"] > 0.6) & (d["auroc"] > 0.6)]
            out.append(d.sort_values("auroc_rest")["category"].iloc[-1] if len(d) else "unassigned")
    return out


def main(argv=None) -> dict:
    from scipy.stats import mannwhitneyu  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--permutations", type=int, default=4000)
    ap.add_argument("--seeds", default=None, help="comma-separated crosscoder seeds to pool (default: every seed found)")
    ap.add_argument("--modes", default="hard,soft,top1", help="labellings to test")
    ap.add_argument("--stable-only", action="store_true",
                    help="count a specific latent only when both latent-scaling ratios are stable (diff.drop_unstable)")
    args = ap.parse_args(argv)
    items = seed_stages(args.run)
    if args.seeds:
        want = {int(x) for x in args.seeds.split(",")}
        items = [it for it in items if it[0] in want]
    if not items:
        raise SystemExit(f"{args.run}: no grounded crosscoder stages (run `lm-diff run` into it first)")
    ids = seed_clusters([CrossCoder.load(cc) for *_, cc in items], 0.7)
    tax = get_taxonomy(None)
    sets = []
    for (_, diff, g, _), cid in zip(items, ids):
        sc = pd.read_parquet(diff / "scaling.parquet")
        if args.stable_only:
            sc = sc[sc["stable"].astype(bool)]
        pick = lambda d: sorted(int(j) for j in sc[(sc["direction"] == d) & sc["specific"].astype(bool)  # noqa: E731
                                                   & (sc["role"] != "baseline")]["latent"].unique())
        lt = pd.read_parquet(diff / "latent_table.parquet")
        shared = live_shared(lt)
        sets.append((pd.read_parquet(g / "grounding.parquet"), pick("B"), pick("A"), cid, shared))
    result: dict = {"run": str(args.run), "seeds": [s for s, *_ in items], "statistics": {}}
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode == "enrich":  # the headline: specific (S ∪ T) against live shared latents, hard labels
            df = category_change([(labels(g, S + T, "hard"), labels(g, R, "hard")) for g, S, T, _, R in sets],
                                 [(cid[S + T], cid[R]) for _, S, T, cid, R in sets], tax,
                                 StatsConfig(permutations=args.permutations))
            df = df.rename(columns={CATEGORY: "category", CHANGE_RATIO: "share_ratio", CHANGE_P: "p", CHANGE_Q: "q",
                                    N_SPECIFIC: "n_S", N_SHARED: "n_T"})
        else:
            per_seed = [(labels(g, S, mode), labels(g, T, mode)) for g, S, T, _, _ in sets]
            clusters = [(cid[S], cid[T]) for _, S, T, cid, _ in sets]
            df = pooled_category_shift(per_seed, clusters, tax, StatsConfig(permutations=args.permutations))
        result["statistics"][mode] = {r["category"]: {"share_ratio": r["share_ratio"], "p": r["p"], "q": r["q"],
                                                      "n_S": r["n_S"], "n_T": r["n_T"]}
                                      for r in df.to_dict("records")}
    aff = {}
    for c in [t.name for t in tax]:
        xs = np.concatenate([g[(g["category"] == c) & g["latent"].isin(S)]["auroc_rest"].to_numpy() for g, S, _, _, _ in sets])
        ys = np.concatenate([g[(g["category"] == c) & g["latent"].isin(T)]["auroc_rest"].to_numpy() for g, _, T, _, _ in sets])
        if len(xs) and len(ys):
            aff[c] = {"mean_S": float(xs.mean()), "mean_T": float(ys.mean()), "p": float(mannwhitneyu(xs, ys).pvalue)}
    result["statistics"]["affinity"] = aff
    cats = [t.name for t in tax]
    print(f"{'category':22s}" + "".join(f" {m + ' ratio':>12s} {m + ' q':>9s}" for m in modes)
          + f" {'affinity p':>11s}")
    for c in cats:
        row = f"{c:22s}"
        for m in modes:
            r = result["statistics"][m].get(c, {})
            ratio = r.get("share_ratio")
            row += f" {('∞' if ratio == float('inf') else f'{100 * ratio:+.0f}%') if ratio is not None and ratio == ratio else '—':>12s}"
            row += f" {r.get('q', float('nan')):9.4f}"
        row += f" {aff.get(c, {}).get('p', float('nan')):11.2e}"
        print(row)
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
