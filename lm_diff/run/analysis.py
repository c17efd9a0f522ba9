"""The diff stage of ``lm-diff run``: per-latent tables, latent scaling, grounded categories, category shifts, controls,
quality metrics, document activations for linkage and the causal check, written as the artifacts that
``lm-diff report --diff`` reads (docs/report_schema.md).

Sets (docs/architecture.md): direct design: S = B-specific latents of the (A, B) crosscoder, T = its A-specific latents.
Anchored design: S = B-specific latents of (P, B), T = A-specific latents of (P, A) ("fine-tune-specific vs pretrained"
in each crosscoder), as in the seed paper.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lm_diff.config import RunConfig
from lm_diff.io import write_json, write_text

NEUTRAL = "neutral"


@dataclasses.dataclass
class CrosscoderDiff:
    """Everything computed for one trained crosscoder."""

    name: str
    seed: int
    models: tuple[int, int]
    cc: Any
    table: pd.DataFrame
    scaling: pd.DataFrame
    assign: pd.DataFrame

    def specific(self, direction: str) -> list[int]:
        s = self.scaling
        rows = s[(s["direction"] == direction) & s["specific"].astype(bool) & (s["role"] != "baseline")]
        return sorted(int(j) for j in rows["latent"].unique())

    def labels(self, latents: list[int]) -> list[list[str]]:
        from lm_diff.categorize.grounding import latent_labels

        got = latent_labels(self.assign, latents)
        return [got[j] for j in latents]


def _doc_index(capture_dir: Path) -> list[dict]:
    from lm_diff.io import read_jsonl

    return read_jsonl(capture_dir / "doc_index.jsonl", fix="delete the capture stage directory and rerun")


def diff_crosscoder(cfg: RunConfig, store: Any, layer: int, name: str, seed: int, models: tuple[int, int], cc_dir: Path,
                    grounding_ids: np.ndarray, grounding_cats: list[str], taxonomy: list) -> CrosscoderDiff:
    """Latent table, latent scaling and grounded categories of one crosscoder."""
    from lm_diff.categorize.grounding import grounded_assign, store_prompt_max_acts
    from lm_diff.crosscoder.model import CrossCoder
    from lm_diff.diff.scaling import latent_scaling
    from lm_diff.diff.table import latent_table

    cc = CrossCoder.load(cc_dir)
    cc.eval()
    table = latent_table(cc, store, layer, models, cfg.diff, progress=True)
    table = apply_latent_metric_plugins(table, {"crosscoder": cc, "store": store, "layer": layer, "models": models,
                                                "name": name, "seed": seed, "config": cfg})
    scaling = latent_scaling(cc, store, layer, models, cfg=cfg.diff, table=table, tokens=cfg.diff.scaling_tokens,
                             seed=seed, progress=True)
    ids, max_acts = store_prompt_max_acts(cc, store, layer, models, doc_ids=grounding_ids, progress=True)
    cat_of = dict(zip(grounding_ids.tolist(), grounding_cats))
    assign = grounded_assign(max_acts, [cat_of[int(i)] for i in ids], taxonomy, cfg.categories.auroc_min,
                             cfg.categories.q, specificity_min=cfg.categories.specificity_min, neutral=NEUTRAL)
    return CrosscoderDiff(name, seed, models, cc, table, scaling, assign)


def apply_latent_metric_plugins(table: pd.DataFrame, context: dict) -> pd.DataFrame:
    """Add the columns returned by every ``lm_diff_latent_metrics`` hook (one value per latent, in table order)."""
    from lm_diff.errors import UserError
    from lm_diff.plugins.manager import hook

    for result in hook().lm_diff_latent_metrics(table=table, context=context):
        for col, values in (result or {}).items():
            values = list(values)
            if len(values) != len(table):
                raise UserError(f"a lm_diff_latent_metrics plugin returned {len(values)} values for column {col!r}; "
                                f"expected one per latent ({len(table)})")
            if col in table.columns:
                raise UserError(f"a lm_diff_latent_metrics plugin returned column {col!r}, which already exists")
            table[col] = values
    return table


def annotate_sets(cfg: RunConfig, store: Any, layer: int, out: Path, sets, taxonomy: list) -> Optional[dict]:
    """Optional LLM annotation (categories.method llm/both) of the selected latents; returns κ vs grounded labels."""
    from lm_diff.categorize.annotate import compare_with_grounded
    from lm_diff.diff.examples import collect_examples
    from lm_diff.errors import UserError
    from lm_diff.plugins.manager import hook

    annotators: dict = {}
    for result in hook().lm_diff_annotators():
        for k, v in (result or {}).items():
            annotators.setdefault(k, v)
    if "llm" not in annotators:
        raise UserError("categories.method needs the 'llm' annotator, but no plugin provides it")
    frames, kappas = [], {}
    for d, ids, set_name, off in sets:
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


def _latent_rows(S: CrosscoderDiff, T: CrosscoderDiff, s_ids: list[int], t_ids: list[int], offset_T: int) -> pd.DataFrame:
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


def _mass(d: CrosscoderDiff, latents: list[int], side: str) -> list[float]:
    t = d.table.set_index("latent")
    return [float(t.at[j, "mean_act"] * t.at[j, f"norm_{side}"]) for j in latents]


def _sets(cfg: RunConfig, diffs: dict[str, dict[int, CrosscoderDiff]], seed: int) -> tuple[CrosscoderDiff, list[int], CrosscoderDiff, list[int]]:
    if cfg.design == "anchored":
        S, T = diffs["PB"][seed], diffs["PA"][seed]
        return S, S.specific("B"), T, T.specific("B")
    d = diffs["AB"][seed]
    return d, d.specific("B"), d, d.specific("A")


def analyse(cfg: RunConfig, pair: Any, stages: Any, evals: dict[str, Path], capture_dir: Path, layer: int,
            crosscoders: dict[str, dict[int, Path]], identity: Optional[Path], loaded: dict) -> dict:
    """Run the diff stage (cached) and build the combined report from it and the benchmark runs."""
    from lm_diff.report.from_runs import build_from_runs

    key = {
        "capture": capture_dir.name, "layer": layer,
        "crosscoders": {n: {s: p.parent.name for s, p in by_seed.items()} for n, by_seed in crosscoders.items()},
        "identity": identity.parent.name if identity else None,
        "evals": {r: p.parent.name for r, p in evals.items()},
        "diff": dataclasses.asdict(cfg.diff), "categories": dataclasses.asdict(cfg.categories),
        "stats": dataclasses.asdict(cfg.stats), "controls": dataclasses.asdict(cfg.controls),
        "benchmarks": dataclasses.asdict(cfg.benchmarks), "version": 2,
    }

    def fn(d: Path) -> dict:
        return _diff_stage(cfg, pair, d, evals, capture_dir, layer, crosscoders, identity, loaded)

    d, summary = stages.run("diff", key, fn, label="diffing, categories, controls and linkage")
    report = build_from_runs(evals["A"], evals["B"], diff=d, config=cfg)
    return report


def _diff_stage(cfg: RunConfig, pair: Any, out: Path, evals: dict[str, Path], capture_dir: Path, layer: int,
                crosscoders: dict[str, dict[int, Path]], identity: Optional[Path], loaded: dict) -> dict:
    from rich.console import Console

    from lm_diff.capture.store import ActivationStore
    from lm_diff.categorize.shift import category_shift
    from lm_diff.categorize.taxonomy import get_taxonomy
    from lm_diff.diff.controls import identity_control_summary, seed_reproducibility
    from lm_diff.diff.scaling import latent_scaling
    from lm_diff.diff.table import latent_table
    from lm_diff.models import crosscoder_pairs

    con = Console(highlight=False)
    store = ActivationStore(capture_dir / "store")
    index = _doc_index(capture_dir)
    taxonomy = get_taxonomy(cfg)
    g_ids = np.array([i for i, r in enumerate(index) if r["kind"] == "grounding"], dtype=np.int64)
    g_cats = [index[i]["category"] for i in g_ids]
    seeds = list(cfg.controls.seeds)

    diffs: dict[str, dict[int, CrosscoderDiff]] = {}
    for name, by_seed in crosscoders.items():
        diffs[name] = {}
        for seed, cc_dir in by_seed.items():
            con.print(f"[bold]diff[/bold] crosscoder {name} seed {seed}")
            diffs[name][seed] = diff_crosscoder(cfg, store, layer, name, seed, crosscoder_pairs(cfg, pair)[name],
                                                cc_dir, g_ids, g_cats, taxonomy)

    main_seed = seeds[0]
    S, s_ids, T, t_ids = _sets(cfg, diffs, main_seed)
    per_seed = []
    for seed in seeds:
        Sx, sx, Tx, tx = _sets(cfg, diffs, seed)
        per_seed.append((Sx.labels(sx), Tx.labels(tx)))
    offset_T = int(S.table["latent"].max()) + 1 if T is not S else 0
    sets = ((S, s_ids, "S", 0), (T, t_ids, "T", offset_T))
    cat_rows = []
    for d, ids, set_name, off in sets:
        a = d.assign[d.assign["latent"].isin(ids)].copy()
        a["set"] = set_name
        a["latent"] = a["latent"] + off
        cat_rows.append(a)
    cats = pd.concat(cat_rows, ignore_index=True)
    s_labels, t_labels = S.labels(s_ids), T.labels(t_ids)
    if cfg.categories.method in ("llm", "both"):
        write_json(out / "annotation_agreement.json", annotate_sets(cfg, store, layer, out, sets, taxonomy))
        if cfg.categories.method == "llm":  # LLM labels drive the headline; grounded ones stay in grounding.parquet
            ann = pd.read_parquet(out / "annotations.parquet")
            ann = ann[ann["kept"].astype(bool) & (ann["category"] != "none")]
            cats = pd.DataFrame({"latent": ann["latent"], "category": ann["category"], "set": ann["set"],
                                 "assigned": True, "auroc": np.nan})
            by = {(r.set, int(r.latent)): r.category for r in ann.itertuples()}
            s_labels = [[by[("S", j)]] if ("S", j) in by else ["unassigned"] for j in s_ids]
            t_labels = [[by[("T", j + offset_T)]] if ("T", j + offset_T) in by else ["unassigned"] for j in t_ids]
    cats.to_parquet(out / "categories.parquet")
    shift = category_shift(s_labels, t_labels, taxonomy, cfg.stats,
                           mass_S=_mass(S, s_ids, "B"), mass_T=_mass(T, t_ids, "A" if T is S else "B"),
                           per_seed=per_seed if len(seeds) > 1 else None, permutation=True)
    pooled = cfg.stats.pool_seeds and len(seeds) > 1 and cfg.categories.method != "llm"
    if pooled:  # headline: pooled over seeds, clusters of matched latents as the unit (docs/architecture.md)
        shift.to_parquet(out / "shift_main_seed.parquet")
        shift = _pooled_shift(cfg, diffs, seeds, taxonomy, per_seed)
        con.print(f"pooled category shift over {len(seeds)} seeds: N_S = {int(shift.attrs['N_S'])}, "
                  f"N_T = {int(shift.attrs['N_T'])} latents in {shift.attrs['clusters']} clusters")
    shift.to_parquet(out / "shift.parquet")
    latents = _latent_rows(S, T, s_ids, t_ids, offset_T)
    latents.to_parquet(out / "latents.parquet")
    S.scaling.to_parquet(out / "scaling.parquet")
    if T is not S:
        T.scaling.to_parquet(out / "scaling_T.parquet")
    S.assign.to_parquet(out / "grounding.parquet")

    # Per-seed shifts and reproducibility.
    seed_rows = []
    for seed, (s_lab, t_lab) in zip(seeds, per_seed):
        sh = category_shift(s_lab, t_lab, taxonomy, cfg.stats)
        for r in sh.to_dict("records"):
            seed_rows.append({"seed": seed, "category": r["category"], "share_ratio": r["share_ratio"],
                              "n_S": r["n_S"], "n_T": r["n_T"]})
    controls: dict[str, Any] = {"seeds": _seed_summary(seed_rows, seeds)}
    if len(seeds) > 1:
        for name, by_seed in diffs.items():
            rep = seed_reproducibility([by_seed[s].cc for s in seeds], seeds=seeds)
            controls.setdefault("reproducibility", {})[name] = _repro_summary(rep, by_seed[main_seed], seeds)
    controls["selection"] = {name: _selection_counts(by_seed[main_seed]) for name, by_seed in diffs.items()}
    if identity is not None:
        from lm_diff.crosscoder.model import CrossCoder

        a = pair.index["A"]
        icc = CrossCoder.load(identity)
        itable = latent_table(icc, store, layer, (a, a), cfg.diff)
        iscaling = latent_scaling(icc, store, layer, (a, a), cfg=cfg.diff, table=itable, tokens=cfg.diff.scaling_tokens)
        controls["identity"] = identity_control_summary(itable, iscaling, cfg.controls)
    write_json(out / "controls.json", controls)

    # Document activations on the scored benchmark prompts (exposure, association).
    doc_acts = _doc_activations(store, layer, index, sets)
    doc_acts.to_parquet(out / "doc_activations.parquet")

    # Examples for the latent cards.
    _write_examples(cfg, store, layer, out, sets)

    # Quality metrics (reconstruction on held-out tokens, spliced loss).
    from lm_diff.diff.quality import quality_metrics

    write_json(out / "quality.json", quality_metrics(cfg, pair, store, layer, diffs, main_seed, index, loaded))

    # Causal check.
    if cfg.controls.causal:
        from lm_diff.link.causal import causal_check

        write_json(out / "causal.json", causal_check(cfg, pair, S, s_ids, evals, loaded, layer))

    manifest = _organism_manifest(pair)
    if manifest:
        write_json(out / "organism.json", manifest)
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return {"S": len(s_ids), "T": len(t_ids), "grounding_prompts": int(len(g_ids))}


def _pooled_shift(cfg: RunConfig, diffs: dict[str, dict[int, CrosscoderDiff]], seeds: list[int], taxonomy: list,
                  per_seed: list[tuple[list, list]]) -> pd.DataFrame:
    """The category shift pooled over seeds (``shift.pooled_category_shift``) from each seed's (S, T) labels, clusters
    from Hungarian matching of each crosscoder's seeds (T's ids are offset when T comes from another crosscoder, so S
    and T clusters stay apart)."""
    from lm_diff.categorize.shift import pooled_category_shift
    from lm_diff.diff.controls import seed_clusters

    cl: dict[str, dict[int, np.ndarray]] = {}
    offset = 0
    for name, by_seed in diffs.items():
        ids = seed_clusters([by_seed[s].cc for s in seeds], cfg.stats.cluster_min_cos)
        cl[name] = {s: x + offset for s, x in zip(seeds, ids)}
        offset += int(max(int(x.max()) for x in ids)) + 1
    clusters, masses = [], []
    for seed in seeds:
        Sx, sx, Tx, tx = _sets(cfg, diffs, seed)
        clusters.append((cl[Sx.name][seed][sx], cl[Tx.name][seed][tx]))
        masses.append((_mass(Sx, sx, "B"), _mass(Tx, tx, "A" if Tx is Sx else "B")))
    return pooled_category_shift(per_seed, clusters, taxonomy, cfg.stats, masses=masses)


def _selection_counts(d: CrosscoderDiff) -> dict:
    t, s = d.table, d.scaling
    live = ~t["dead"].astype(bool)
    out = {"latents": int(len(t)), "live": int(live.sum()), "dead": int((~live).sum())}
    for direction, tag in (("B", "B-only"), ("A", "A-only")):
        cand = s[(s["direction"] == direction) & (s["role"] != "baseline")]
        out[f"{direction}_delta_only"] = int(((t["tag"] == tag) & live).sum())
        out[f"{direction}_specific"] = int(cand["specific"].astype(bool).sum())
        out[f"{direction}_removed_by_scaling"] = out[f"{direction}_delta_only"] - out[f"{direction}_specific"]
    return out


def _seed_summary(rows: list[dict], seeds: list[int]) -> dict:
    df = pd.DataFrame(rows)
    out = {"seeds": seeds, "per_seed": rows}
    if len(seeds) > 1 and not df.empty:
        agree = {}
        for c, g in df.groupby("category"):
            signs = set(np.sign(g["share_ratio"].replace([np.inf, -np.inf], np.nan).dropna()).astype(int).tolist())
            agree[c] = len(signs) <= 1
        out["sign_agreement"] = agree
    return out


def _repro_summary(rep: pd.DataFrame, d: CrosscoderDiff, seeds: list[int]) -> dict:
    cols = [c for c in rep.columns if c not in ("latent",)]
    out = {"mean_reproducibility": float(rep["reproducibility"].mean()) if "reproducibility" in rep else None}
    if "reproducibility" in rep:
        r = rep.set_index("latent")["reproducibility"] if "latent" in rep else rep["reproducibility"]
        for direction in ("B", "A"):
            ids = d.specific(direction)
            out[f"{direction}_specific_reproducibility"] = float(r.reindex(ids).mean()) if ids else None
    out["columns"] = cols
    return out


def _doc_activations(store: Any, layer: int, index: list[dict], sets) -> pd.DataFrame:
    from lm_diff.categorize.grounding import store_prompt_max_acts

    bench = np.array([i for i, r in enumerate(index) if r["kind"] == "bench"], dtype=np.int64)
    frames = []
    for d, ids, set_name, off in sets:
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


def _write_examples(cfg: RunConfig, store: Any, layer: int, out: Path, sets) -> None:
    from lm_diff.diff.examples import collect_examples

    lines = []
    n_cards = cfg.report.latent_cards
    for d, ids, set_name, off in sets:
        if not ids:
            continue
        t = d.table.set_index("latent")
        top = sorted(ids, key=lambda j: -float(t.at[j, "mean_act"]))[:n_cards]
        ex = collect_examples(d.cc, store, layer, d.models, top, store.tokenizer, cfg.diff,
                              n_top=cfg.report.card_examples, n_quantiles=2, per_quantile=1, n_random=2)
        for j in top:
            e = ex.get(j) or ex.get(str(j)) or {}
            acts = [{"text": w.get("text", ""), "act": float(w.get("max_act", 0.0))}
                    for w in e.get("activating", []) if w.get("kind", "top") == "top"]
            lines.append(json.dumps({"latent": int(j) + off, "set": set_name, "examples": acts}, ensure_ascii=False))
    write_text(out / "examples.jsonl", "\n".join(lines) + ("\n" if lines else ""))


def _organism_manifest(pair: Any) -> Optional[dict]:
    for spec, path in zip(pair.specs, pair.paths):
        if spec.startswith("organisms://") and path is not None:
            m = Path(path).parent / "organism.json"
            if m.exists():
                return json.loads(m.read_text())
    return None


__all__ = ["analyse", "diff_crosscoder", "CrosscoderDiff", "apply_latent_metric_plugins"]
