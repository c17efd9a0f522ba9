"""``lm-diff report`` and ``lm-diff ci``: the combined report from existing lm-eval outputs (+ optional diff artifacts).

The diff reader is tolerant: ``diff`` may be a run directory (``OUT/stages/diff-<hash>/`` is found, newest complete
one first; ``OUT/diff/`` also works) or a diff stage directory itself. Every artifact is optional and read with
column aliases; the expected files and columns are listed in docs/report_schema.md ("Inputs").
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lm_diff.errors import UserError

# ----------------------------------------------------------------------------------------------------------------------
# Diff artifacts


@dataclass
class DiffArtifacts:
    """What a diff run directory holds (each part optional)."""

    stage_dir: Optional[Path] = None
    latents: Optional[pd.DataFrame] = None
    """Per-latent table merged with scaling and categories (latent, delta_norm, set, nu_eps, nu_r, selected, category)."""
    categories: Optional[pd.DataFrame] = None
    """(latent, set, category) of assigned latents."""
    shift: Optional[pd.DataFrame] = None
    examples: dict = field(default_factory=dict)
    """(latent, set or None) -> [{text, act}]"""
    doc_acts: Optional[pd.DataFrame] = None
    quality: Optional[dict] = None
    controls: Optional[dict] = None
    causal: Optional[dict] = None
    organism: Optional[dict] = None
    config_path: Optional[Path] = None


_STAGE_FILES = ("latents.parquet", "shift.parquet", "scaling.parquet", "categories.parquet")


def _is_stage(d: Path) -> bool:
    return d.is_dir() and any((d / f).exists() for f in _STAGE_FILES)


def find_diff_stage(diff: str | Path) -> Path:
    """The diff stage directory under ``diff`` (see module docstring)."""
    d = Path(diff).expanduser()
    if not d.exists():
        raise UserError(f"{d}: no such directory; pass the lm-diff run directory (with stages/diff-*/) as --diff")
    if _is_stage(d):
        return d
    if _is_stage(d / "diff"):
        return d / "diff"
    cands = [c for c in sorted((d / "stages").glob("diff-*")) if _is_stage(c)] if (d / "stages").is_dir() else []
    done = [c for c in cands if (c / "DONE").exists() or (c / "DONE.json").exists()]
    pool = done or cands
    if not pool:
        raise UserError(f"{d}: no diff artifacts (stages/diff-*/latents.parquet or shift.parquet); run `lm-diff diff` first "
                        "or omit --diff for a benchmarks-only report")
    return max(pool, key=lambda c: c.stat().st_mtime)


def _read_parquet(p: Path) -> Optional[pd.DataFrame]:
    if not p.exists():
        return None
    try:
        return pd.read_parquet(p)
    except Exception as exc:  # corrupt / partial file
        raise UserError(f"{p}: cannot be read as parquet ({type(exc).__name__}); rerun the diff stage") from None


def _read_json(*paths: Path) -> Optional[dict]:
    for p in paths:
        if p.exists():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}: not valid JSON ({exc.msg}); rerun the stage that wrote it") from None
    return None


def _rename(df: pd.DataFrame, aliases: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    for name, alts in aliases.items():
        if name not in df.columns:
            for a in alts:
                if a in df.columns:
                    df = df.rename(columns={a: name})
                    break
    return df


def _set_from_tag(tag: Any) -> Optional[str]:
    t = str(tag)
    return "S" if t in ("B-only", "B", "ft_only", "S") else ("T" if t in ("A-only", "A", "base_only", "T") else None)


def _norm_set(v: Any) -> Optional[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    s = str(v)
    return {"B": "S", "B-only": "S", "S": "S", "A": "T", "A-only": "T", "T": "T"}.get(s, s)


def read_diff_artifacts(diff: str | Path) -> DiffArtifacts:
    """Read every artifact of a diff run (see docs/report_schema.md "Inputs" for names and columns)."""
    stage = find_diff_stage(diff)
    root = Path(diff).expanduser()
    art = DiffArtifacts(stage_dir=stage)
    lat = _read_parquet(stage / "latents.parquet")
    if lat is not None:
        lat = _rename(lat, {"latent": ("latent_id", "index", "j"), "delta_norm": ("dnorm", "delta")})
        if "delta_norm" not in lat.columns and "dec_norm_diff" in lat.columns:  # code orientation: 1 - Δ
            lat["delta_norm"] = 1.0 - lat["dec_norm_diff"]
        if "set" not in lat.columns and "tag" in lat.columns:
            lat["set"] = lat["tag"].map(_set_from_tag)
    sc = _read_parquet(stage / "scaling.parquet")
    if sc is not None:
        sc = _rename(sc, {"latent": ("latent_id", "j"), "nu_eps": ("nu_epsilon", "nu_e"), "nu_r": ("nu_recon",)})
        if "set" in sc.columns:
            sc["set"] = sc["set"].map(_norm_set)
        if lat is None:
            lat = sc.copy()
        else:
            keep = [c for c in sc.columns if c not in lat.columns or c in ("latent", "set")]
            on = ["latent", "set"] if "set" in sc.columns and "set" in lat.columns else ["latent"]
            lat = lat.merge(sc[keep], on=on, how="left")
    cats = _read_parquet(stage / "categories.parquet")
    if cats is not None:
        cats = _rename(cats, {"latent": ("latent_id", "j")})
        if "assigned" in cats.columns:
            cats = cats[cats["assigned"].astype(bool)]
        if "set" in cats.columns:
            cats["set"] = cats["set"].map(_norm_set)
        elif lat is not None and "set" in lat.columns:
            cats = cats.merge(lat[["latent", "set"]].drop_duplicates("latent"), on="latent", how="left")
        else:
            cats["set"] = "S"
        art.categories = cats[["latent", "set", "category"]].copy()
        if lat is not None:
            first = art.categories.groupby(["latent", "set"], as_index=False)["category"].first()
            lat = lat.drop(columns=[c for c in ("category",) if c in lat.columns]).merge(first, on=["latent", "set"], how="left")
    if lat is not None and "selected" not in lat.columns and "set" in lat.columns:
        lat["selected"] = lat["set"].isin(["S", "T"])
    art.latents = lat
    art.shift = _read_parquet(stage / "shift.parquet")
    art.doc_acts = _read_parquet(stage / "doc_activations.parquet")
    if art.doc_acts is not None:
        art.doc_acts = _rename(art.doc_acts, {"act": ("max_act", "activation"), "latent": ("latent_id",)})
        if "set" in art.doc_acts.columns:
            art.doc_acts["set"] = art.doc_acts["set"].map(_norm_set)
    ex_path = stage / "examples.jsonl"
    if ex_path.exists():
        for line in ex_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (int(r.get("latent", -1)), _norm_set(r.get("set")))
            items = r.get("examples") or r.get("top") or ([r] if "text" in r or "tokens" in r else [])
            out = art.examples.setdefault(key, [])
            for e in items:
                text = e.get("text") or e.get("window") or ("".join(e["tokens"]) if isinstance(e.get("tokens"), list) else None)
                act = e.get("act", e.get("max_act", e.get("activation")))
                if text is not None:
                    out.append({"text": str(text), "act": act})
    art.quality = _read_json(stage / "quality.json", root / "quality.json")
    art.controls = _read_json(stage / "controls.json", root / "controls.json")
    art.causal = _read_json(stage / "causal.json", root / "causal.json")
    art.organism = _read_json(stage / "organism.json", root / "organism.json")
    cfgp = root / "config.yaml"
    art.config_path = cfgp if cfgp.exists() else None
    return art


def _cards_from(art: DiffArtifacts, n: int) -> list[dict]:
    lat = art.latents
    if lat is None or "set" not in lat.columns:
        return [{"latent": j, "set": s, "examples": ex} for (j, s), ex in list(art.examples.items())[:n]]
    sel = lat[lat["selected"].fillna(False).astype(bool)] if "selected" in lat.columns else lat[lat["set"].notna()]
    sel = sel.assign(_assigned=sel["category"].notna() if "category" in sel.columns else False,
                     _spec=np.where(sel["set"] == "S", sel.get("delta_norm", 0.5), 1 - sel.get("delta_norm", 0.5)))
    sel = sel.sort_values(["_assigned", "set", "_spec"], ascending=[False, True, False])
    out = []
    for _, r in sel.head(n).iterrows():
        j, s = int(r["latent"]), r["set"]
        ex = art.examples.get((j, s)) or art.examples.get((j, None)) or []
        out.append({"latent": j, "set": s, "examples": ex})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Task categories


def resolve_task_categories(joined: pd.DataFrame, results: Optional[dict] = None, config: Any = None) -> dict[str, str]:
    """task -> category: ``benchmarks.task_categories`` > the task's ``metadata.category`` > the
    ``lm_diff_task_categories`` plugin mapping for the task or an enclosing group (``fnmatch`` patterns allowed)."""
    tasks = list(dict.fromkeys(joined["task"]))
    overrides = dict(getattr(getattr(config, "benchmarks", None), "task_categories", None) or {})
    declared = dict(joined.attrs.get("task_categories") or {})
    try:
        from lm_diff.bench.suites import plugin_task_categories

        plugin = plugin_task_categories()
    except Exception:  # plugins are optional here
        plugin = {}
    parents: dict[str, list[str]] = {}
    for g, subs in ((results or {}).get("group_subtasks") or {}).items():
        for s in subs or []:
            parents.setdefault(s, []).append(g)

    from lm_diff.bench.suites import lookup_category as lookup

    try:  # categories declared on lm_diff's own task groups (group metadata is not in the results JSON)
        from lm_diff.bench.suites import task_categories, task_manager

        indexed = task_categories(tasks, task_manager())
    except Exception:
        indexed = {}
    out = {}
    for t in tasks:
        names = [t, *parents.get(t, [])]
        cat = next((c for n in names if (c := lookup(n, overrides))), None) or declared.get(t) or indexed.get(t) or \
            next((c for n in names if (c := lookup(n, plugin))), None)
        if cat:
            out[t] = cat
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Report


def _load_config(config: Any, fallback: Optional[Path] = None):
    from lm_diff.config import RunConfig, load_config

    if config is None:
        if fallback is not None:
            try:
                return load_config(fallback)
            except UserError:
                pass
        return RunConfig()
    if isinstance(config, (str, Path)):
        return load_config(config)
    return config


def build_from_runs(base: str | Path, finetuned: str | Path, diff: Optional[str | Path] = None, config: Any = None) -> dict:
    """Build (but do not write) the report dict from lm-eval outputs and optional diff artifacts."""
    from lm_diff.bench.join import join_runs, load_run, score_gaps
    from lm_diff.link.association import association, causal_table, exposure
    from lm_diff.report.build import build_report, make_category_table

    art = read_diff_artifacts(diff) if diff else None
    cfg = _load_config(config, art.config_path if art else None)
    run_a, run_b = load_run(base), load_run(finetuned)
    joined = join_runs(run_a, run_b)
    tcats = resolve_task_categories(joined, run_a.results, cfg)
    joined.attrs["task_categories"] = tcats
    gaps = score_gaps(joined, tcats, cfg.stats)
    category_table = None
    latents = cards = None
    quality = controls = organism = None
    if art is not None:
        ex = asc = None
        if art.doc_acts is not None and art.categories is not None:
            ex = exposure(art.doc_acts, art.categories, joined, tcats)
            asc = association(art.doc_acts, art.categories, joined, tcats, cfg.stats)
        category_table = make_category_table(art.shift, ex, asc, causal_table(art.causal))
        latents = art.latents
        cards = _cards_from(art, cfg.report.latent_cards)
        quality, controls, organism = art.quality, art.controls, art.organism
    meta = {
        "models": joined.attrs.get("models"),
        "inputs": {"base": str(run_a.path), "finetuned": str(run_b.path), "diff": str(art.stage_dir) if art else None},
        "n_documents": int(len(joined)),
        "n_shot": joined.attrs.get("n_shot"),
        "limit": joined.attrs.get("limit"),
        "task_categories": tcats,
    }
    if cfg.name == "run":
        meta["title"] = "lm_diff report: " + (" vs ".join(str(v) for v in (joined.attrs.get("models") or {}).values()) or "run")
    return build_report(config=cfg, quality=quality, controls=controls, category_table=category_table, score_table=gaps,
                        task_table=gaps, latents=latents, cards=cards, organism=organism, meta=meta)


def report_from_runs(
    base: str | Path,
    finetuned: str | Path,
    diff: Optional[str | Path] = None,
    out: str | Path = Path("report"),
    config: Any = None,
    formats: Optional[list[str]] = None,
    quiet: bool = False,
) -> dict:
    """``lm-diff report``: build the report and write it to ``out`` (formats from the config unless given)."""
    from lm_diff.report.build import print_summary, write_report

    report = build_from_runs(base, finetuned, diff, config)
    cfg_formats = ((report.get("run") or {}).get("config") or {}).get("report", {}).get("formats")
    paths = write_report(report, out, formats or cfg_formats or ["json", "md", "html"])
    if not quiet:
        from rich.console import Console
        from rich.markup import escape

        con = Console(highlight=False)
        print_summary(report, con)
        for fmt, p in paths.items():
            con.print(f"[bold green]report[/bold green] ({fmt}): {escape(str(p))}")
    return report


# ----------------------------------------------------------------------------------------------------------------------
# CI


def ci_summary_markdown(report: dict, results: list, report_dir: Optional[Path] = None) -> str:
    """Markdown fit for a CI job summary: verdict, rules, quality gates, overall and per-category gaps."""
    from lm_diff.report.build import _md_table, fmt_ci, fmt_num, fmt_pct, gates_lines

    failed = [r for r in results if r.failed]
    lines = ["## lm-diff regression check", ""]
    if results:
        lines.append(f"**{'❌ FAILED' if failed else '✅ PASSED'}**: {len(failed)} of {len(results)} rule(s) failed.")
    else:
        lines.append("No `--fail-on` rules given: report only.")
    lines.append("")
    if results:
        lines += _md_table(["rule", "value", "result"],
                           [[r.rule.text, fmt_num(r.value, 3) if r.value is not None else f"n/a ({r.note})",
                             "❌ fail" if r.failed else "✅ pass"] for r in results])
        lines.append("")
    o = report.get("overall")
    if o:
        lines.append(f"Overall Δscore (B − A): **{fmt_num(o['delta'], 1, True)} points** {fmt_ci(o['ci_low'], o['ci_high'])} over {o['n']} documents.")
        lines.append("")
    rows = []
    for c in report["categories"]:
        g, ls = c.get("score_gap") or {}, c.get("latent_shift") or {}
        if not g and not ls:
            continue
        rows.append([c["name"], f"{fmt_num(g.get('delta'), 1, True)} {fmt_ci(g.get('ci_low'), g.get('ci_high'))}" if g else "–",
                     fmt_pct(ls.get("share_ratio")) if ls else "–", {True: "agree", False: "disagree"}.get(c.get("agreement"), "n.s.")])
    if rows:
        lines += _md_table(["category", "Δscore (pts) [CI]", "latent share ratio", "sign"], rows) + [""]
    lines += ["<details><summary>Quality gates</summary>", ""] + gates_lines(report) + ["", "</details>", ""]
    if report_dir:
        lines.append(f"Full report: `{report_dir}/report.html`")
    return "\n".join(lines) + "\n"


def ci(
    base: str | Path,
    finetuned: str | Path,
    diff: Optional[str | Path] = None,
    rules: Optional[list[str]] = None,
    summary: Optional[str | Path] = None,
    out: Optional[str | Path] = None,
    config: Any = None,
) -> int:
    """``lm-diff ci``: exit code 1 when a ``--fail-on`` rule fails, else 0 (bad input raises UserError → exit 2).

    The Markdown summary goes to ``summary`` (overwritten), else appended to ``$GITHUB_STEP_SUMMARY`` when set, else
    printed. ``out`` also writes the full report there.
    """
    from lm_diff.io import write_text
    from lm_diff.report.build import write_report
    from lm_diff.report.ci_rules import evaluate_rules, parse_rule

    parsed = [parse_rule(r) for r in (rules or [])]  # bad rules fail before any work
    report = build_from_runs(base, finetuned, diff, config)
    results = evaluate_rules(parsed, report)
    if out:
        cfg_formats = ((report.get("run") or {}).get("config") or {}).get("report", {}).get("formats")
        write_report(report, out, cfg_formats or ["json", "md", "html"])
    text = ci_summary_markdown(report, results, Path(out) if out else None)
    if summary:
        write_text(summary, text)
    elif os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    for r in results:
        status = "FAIL" if r.failed else "pass"
        val = f"{r.value:.3f}" if r.value is not None else f"n/a ({r.note})"
        print(f"[{status}] {r.rule.text}: {val}", file=sys.stderr)
    return 1 if any(r.failed for r in results) else 0
