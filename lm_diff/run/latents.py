"""The ``categorize`` and ``shift`` stages of ``lm-diff run``.

``categorize`` (keyed on the diff and grounding stages and ``categories.*``): the selected latents' categories
(grounded, or LLM labels when ``categories.method`` asks), the report's per-latent table and the (S, T) labels.
``shift`` (keyed on ``categorize``, every seed's diff and grounding stage and ``stats.*``): the category shift in the
vocabulary of :mod:`lm_diff.schema` (pooled over seeds when configured), beside it the category change test
(``change_*`` columns, docs/method.md#category-change), and the per-seed shifts of the seed control.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lm_diff import console
from lm_diff.capture.store import ActivationStore
from lm_diff.categorize.annotate import compare_with_grounded
from lm_diff.categorize.change import category_change, live_shared
from lm_diff.categorize.shift import category_shift, pooled_category_shift
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import RunConfig
from lm_diff.diff.controls import seed_clusters
from lm_diff.diff.examples import collect_examples
from lm_diff.errors import UserError
from lm_diff.io import read_json, write_json
from lm_diff.plugins.manager import hook, merged_mapping
from lm_diff.run.analysis import CrosscoderDiff, Diffs, mass, set_triples, sets, stage_names
from lm_diff.run.stages import Stages
from lm_diff.schema import (
    CATEGORY,
    CHANGE_COLUMNS,
    CI_HIGH,
    CI_LOW,
    METHOD,
    P_VALUE,
    POOLED_SEEDS,
    Q_VALUE,
    SINGLE_SEED,
    read_table,
    write_table,
)


def categorize_stage(cfg: RunConfig, stages: Stages, capture_dir: Path, layer: int, diffs: Diffs) -> Path:
    seed = cfg.controls.seeds[0]
    key = {"diffs": stage_names(diffs, [seed]), "design": cfg.design, "seed": seed, "capture": capture_dir.name,
           "categories": dataclasses.asdict(cfg.categories), "version": 1}
    if cfg.categories.method in ("llm", "both"):
        key["diff"] = dataclasses.asdict(cfg.diff)  # the annotator's examples

    def fn(d: Path) -> dict:
        triples = set_triples(cfg, diffs, seed)
        (S, s_ids, _, _), (T, t_ids, _, offset_T) = triples
        cat_rows = []
        for x, ids, set_name, off in triples:
            a = x.assign[x.assign["latent"].isin(ids)].copy()
            a["set"] = set_name
            a["latent"] = a["latent"] + off
            cat_rows.append(a)
        cats = pd.concat(cat_rows, ignore_index=True)
        s_labels, t_labels = S.labels(s_ids), T.labels(t_ids)
        if cfg.categories.method in ("llm", "both"):
            write_json(d / "annotation_agreement.json", annotate_sets(cfg, capture_dir, layer, d, triples))
            if cfg.categories.method == "llm":  # LLM labels drive the headline; grounded ones stay in grounding.parquet
                ann = pd.read_parquet(d / "annotations.parquet")
                ann = ann[ann["kept"].astype(bool) & (ann["category"] != "none")]
                cats = pd.DataFrame({"latent": ann["latent"], "category": ann["category"], "set": ann["set"],
                                     "assigned": True, "auroc": np.nan})
                by = {(r.set, int(r.latent)): r.category for r in ann.itertuples()}
                s_labels = [[by[("S", j)]] if ("S", j) in by else ["unassigned"] for j in s_ids]
                t_labels = [[by[("T", j + offset_T)]] if ("T", j + offset_T) in by else ["unassigned"] for j in t_ids]
        write_table(cats, d, "categories")
        write_table(latent_rows(S, T, s_ids, t_ids, offset_T), d, "latents")
        write_json(d / "labels.json", {"S": s_labels, "T": t_labels})
        return {"S": len(s_ids), "T": len(t_ids)}

    d, _ = stages.run("categorize", key, fn, label="categories of the selected latents")
    return d


def annotate_sets(cfg: RunConfig, capture_dir: Path, layer: int, out: Path, triples) -> dict:
    """Optional LLM annotation (categories.method llm/both) of the selected latents; returns κ vs grounded labels."""
    annotators = merged_mapping(hook().lm_diff_annotators())
    if "llm" not in annotators:
        raise UserError("categories.method needs the 'llm' annotator, but no plugin provides it")
    store = ActivationStore(capture_dir / "store")
    taxonomy = get_taxonomy(cfg)
    frames, kappas = [], {}
    for d, ids, set_name, off in triples:
        if not ids:
            continue
        ex = collect_examples(d.cc, store, layer, d.models, ids, store.tokenizer, cfg.diff)
        ann = annotators["llm"](pd.DataFrame({"latent": ids}), ex, taxonomy, cfg.categories,
                                cache_path=out / "annotation_cache.jsonl")
        kappas[set_name] = compare_with_grounded(ann, d.assign)
        ann = ann.copy()
        ann["set"] = set_name
        ann["latent"] = ann["latent"] + off
        frames.append(ann)
    if frames:
        pd.concat(frames, ignore_index=True).to_parquet(out / "annotations.parquet")
    return kappas


def _set_rows(d: CrosscoderDiff, latents: list[int], set_name: str, direction: str) -> pd.DataFrame:
    sc = d.scaling[(d.scaling["direction"] == direction) & (d.scaling["role"] != "baseline")]
    sc = sc.set_index("latent")
    t = d.table.set_index("latent").loc[latents].reset_index()
    for col in ("nu_eps", "nu_r", "stable", "specific"):
        t[col] = sc[col].reindex(t["latent"]).to_numpy() if len(t) else []
    t["set"] = set_name
    t["crosscoder"] = d.name
    return t


def latent_rows(S: CrosscoderDiff, T: CrosscoderDiff, s_ids: list[int], t_ids: list[int], offset_T: int) -> pd.DataFrame:
    """The report's per-latent table: the S crosscoder's table (with ν and set), plus T's rows when T is another
    crosscoder (anchored design; their ids are offset so they stay unique)."""
    table = S.table.copy()
    table["crosscoder"] = S.name
    table["set"] = None
    for direction, ids, name in (("B", s_ids, "S"), ("A", t_ids if T is S else [], "T")):
        sc = S.scaling[(S.scaling["direction"] == direction) & (S.scaling["role"] != "baseline")].set_index("latent")
        mask = table["latent"].isin(sc.index)
        for col in ("nu_eps", "nu_r", "stable", "specific"):
            table.loc[mask, col] = sc[col].reindex(table.loc[mask, "latent"]).to_numpy()
        table.loc[table["latent"].isin(ids), "set"] = name
    if T is not S:
        tr = _set_rows(T, t_ids, "T", "B")
        tr["latent"] = tr["latent"] + offset_T
        table = pd.concat([table, tr], ignore_index=True)
    best = S.assign[S.assign["assigned"].astype(bool)].sort_values("auroc", ascending=False).drop_duplicates("latent")
    table["category"] = table["latent"].map(best.set_index("latent")["category"])
    return table


def in_vocabulary(shift: pd.DataFrame) -> pd.DataFrame:
    """``categorize.shift``'s table in the vocabulary of :mod:`lm_diff.schema`: ``ci_low``/``ci_high`` of the share
    ratio, ``p_value``/``q_value`` and ``method``. Single seed: Fisher's exact p (the label-permutation p where
    Fisher's is undefined) and its BH q; pooled over seeds: the cluster permutation p, its BH q, and ``clusters``
    (clusters of matched latents carrying the category)."""
    df = shift.copy()
    pooled = "clusters_c" in df.columns
    df[CI_LOW], df[CI_HIGH] = df.pop("share_ratio_lo"), df.pop("share_ratio_hi")
    if pooled:
        df[P_VALUE], df[Q_VALUE] = df.pop("p"), df.pop("q")
        df["clusters"] = df.pop("clusters_c")
    else:
        p = df.pop("fisher_p")
        df[P_VALUE] = p.fillna(df["perm_p"]) if "perm_p" in df.columns else p
        df[Q_VALUE] = df.pop("fisher_q")
    df[METHOD] = POOLED_SEEDS if pooled else SINGLE_SEED
    df.attrs = dict(shift.attrs)
    return df


def shift_stage(cfg: RunConfig, stages: Stages, cat_dir: Path, diffs: Diffs) -> Path:
    seeds = list(cfg.controls.seeds)
    key = {"categorize": cat_dir.name, "diffs": stage_names(diffs, seeds), "design": cfg.design, "seeds": seeds,
           "stats": dataclasses.asdict(cfg.stats), "method": cfg.categories.method, "version": 4}

    def fn(d: Path) -> dict:
        taxonomy = get_taxonomy(cfg)
        S, s_ids, T, t_ids = sets(cfg, diffs, seeds[0])
        labels = read_json(cat_dir / "labels.json")
        per_seed = []
        for seed in seeds:
            Sx, sx, Tx, tx = sets(cfg, diffs, seed)
            per_seed.append((Sx.labels(sx), Tx.labels(tx)))
        shift = category_shift(labels["S"], labels["T"], taxonomy, cfg.stats,
                               mass_S=mass(S, s_ids, "B"), mass_T=mass(T, t_ids, "A" if T is S else "B"),
                               per_seed=per_seed if len(seeds) > 1 else None, permutation=True)
        pool = cfg.stats.pool_seeds and len(seeds) > 1
        cl = cluster_ids(cfg, diffs, seeds if pool else seeds[:1])
        if pool and cfg.categories.method != "llm":
            # headline: pooled over seeds, clusters of matched latents as the unit (docs/architecture.md)
            write_table(in_vocabulary(shift), d, "shift_main_seed")
            shift = pooled_shift(cfg, diffs, seeds, taxonomy, per_seed, cl)
            console.out().print(f"pooled category shift over {len(seeds)} seeds: N_S = {int(shift.attrs['N_S'])}, "
                                f"N_T = {int(shift.attrs['N_T'])} latents in {shift.attrs['clusters']} clusters")
        change = change_shift(cfg, diffs, seeds if pool else seeds[:1], taxonomy, cl)
        write_table(with_change(in_vocabulary(shift), change), d, "shift")
        rows = []
        for seed, (s_lab, t_lab) in zip(seeds, per_seed):
            sh = category_shift(s_lab, t_lab, taxonomy, cfg.stats)
            for r in sh.to_dict("records"):
                rows.append({"seed": seed, "category": r["category"], "share_ratio": r["share_ratio"],
                             "n_S": r["n_S"], "n_T": r["n_T"]})
        write_json(d / "seeds.json", seed_summary(rows, seeds))
        return {"categories": int(len(shift))}

    d, _ = stages.run("shift", key, fn, label="category shift")
    return d


def cluster_ids(cfg: RunConfig, diffs: Diffs, seeds: list[int]) -> dict[str, dict[int, np.ndarray]]:
    """{crosscoder name: {seed: cluster id of every latent}} from Hungarian matching of each crosscoder's seeds
    (``controls.seed_clusters``; one seed: singletons). Ids are offset per crosscoder, so the clusters of S and T stay
    apart when T comes from another crosscoder."""
    cl: dict[str, dict[int, np.ndarray]] = {}
    offset = 0
    for name, by_seed in diffs.items():
        ids = (seed_clusters([by_seed[s].cc for s in seeds], cfg.stats.cluster_min_cos) if len(seeds) > 1
               else [np.arange(len(by_seed[seeds[0]].table))])  # one seed: singletons, no crosscoder to load
        cl[name] = {s: x + offset for s, x in zip(seeds, ids)}
        offset += int(max(int(x.max()) for x in ids)) + 1
    return cl


def pooled_shift(cfg: RunConfig, diffs: Diffs, seeds: list[int], taxonomy: list,
                 per_seed: list[tuple[list, list]], cl: dict[str, dict[int, np.ndarray]]) -> pd.DataFrame:
    """The category shift pooled over seeds (``shift.pooled_category_shift``) from each seed's (S, T) labels and the
    clusters of ``cluster_ids``."""
    clusters, masses = [], []
    for seed in seeds:
        Sx, sx, Tx, tx = sets(cfg, diffs, seed)
        clusters.append((cl[Sx.name][seed][sx], cl[Tx.name][seed][tx]))
        masses.append((mass(Sx, sx, "B"), mass(Tx, tx, "A" if Tx is Sx else "B")))
    return pooled_category_shift(per_seed, clusters, taxonomy, cfg.stats, masses=masses)


def change_shift(cfg: RunConfig, diffs: Diffs, seeds: list[int], taxonomy: list,
                 cl: dict[str, dict[int, np.ndarray]]) -> pd.DataFrame:
    """Which categories changed (``change.category_change``, docs/method.md#category-change): per seed, the specific
    latents of both directions (S ∪ T) against the live shared latents of the same crosscoder(s), with grounded labels
    (also when an LLM labels the headline's sets: the shared latents have no LLM label) and the clusters of
    ``cluster_ids``."""
    per_seed, clusters = [], []
    for seed in seeds:
        Sx, sx, Tx, tx = sets(cfg, diffs, seed)
        spec_lab: list = [*Sx.labels(sx), *Tx.labels(tx)]
        spec_k = [cl[Sx.name][seed][sx], cl[Tx.name][seed][tx]]
        shared_lab: list = []
        shared_k = []
        for x in ([Sx] if Tx is Sx else [Sx, Tx]):
            ids = live_shared(x.table)
            shared_lab += x.labels(ids)
            shared_k.append(cl[x.name][seed][ids])
        per_seed.append((spec_lab, shared_lab))
        clusters.append((np.concatenate(spec_k).astype(np.int64), np.concatenate(shared_k).astype(np.int64)))
    return category_change(per_seed, clusters, taxonomy, cfg.stats)


def with_change(shift: pd.DataFrame, change: pd.DataFrame) -> pd.DataFrame:
    """The shift table with the ``change_*`` columns of ``change`` joined on the category (NaN where it has no row)."""
    out = shift.drop(columns=[c for c in CHANGE_COLUMNS if c in shift.columns])
    out = out.merge(change[[CATEGORY, *CHANGE_COLUMNS]], on=CATEGORY, how="left")
    out.attrs = {**shift.attrs, "change": dict(change.attrs)}
    return out


def seed_summary(rows: list[dict], seeds: list[int]) -> dict[str, Any]:
    df = pd.DataFrame(rows)
    out: dict[str, Any] = {"seeds": seeds, "per_seed": rows}
    if len(seeds) > 1 and not df.empty:
        agree = {}
        for c, g in df.groupby("category"):
            signs = set(np.sign(g["share_ratio"].replace([np.inf, -np.inf], np.nan).dropna()).astype(int).tolist())
            agree[c] = len(signs) <= 1
        out["sign_agreement"] = agree
    return out


def read_shift(d: Path) -> pd.DataFrame:
    return read_table(d, "shift")
