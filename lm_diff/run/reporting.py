"""The ``link`` and ``report`` stages of ``lm-diff run``, and ``lm-diff report`` / ``lm-diff ci`` on finished outputs.

``link`` joins the benchmark runs with the latent-side outputs (score gaps, exposure, association, causal fractions,
q_linked, sign agreement: :func:`lm_diff.link.table.link`); ``report`` arranges the result into the report dict
(:func:`lm_diff.report.build.build_report`), which is written as one unit with its Markdown and HTML views.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Optional

from rich.markup import escape

from lm_diff import console
from lm_diff.bench.join import join_runs, load_run
from lm_diff.bench.suites import bench_task_manager, task_categories
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import RunConfig, load_config
from lm_diff.errors import UserError
from lm_diff.io import read_json, write_json, write_text
from lm_diff.link.table import link
from lm_diff.report.build import build_report
from lm_diff.report.ci_rules import evaluate_rules, parse_rule
from lm_diff.report.markdown import ci_summary_markdown
from lm_diff.report.terminal import print_summary
from lm_diff.report.writers import DEFAULT_FORMATS, write_report
from lm_diff.run.outputs import DiffArtifacts, cards_from, find_outputs, read_diff_artifacts, read_outputs
from lm_diff.run.stages import Stages


def resolve_config(config: Any, fallback: Optional[Path] = None) -> RunConfig:
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


def link_outputs(cfg: RunConfig, base: str | Path, finetuned: str | Path, art: Optional[DiffArtifacts]) -> dict:
    """The link stage's result for benchmark runs ``base``/``finetuned`` and latent-side outputs ``art`` (None:
    benchmarks only): {"categories", "scores", "meta"}."""
    run_a, run_b = load_run(base), load_run(finetuned)
    joined = join_runs(run_a, run_b)
    tasks = list(dict.fromkeys(joined["task"]))
    # benchmarks.task_categories > the categories the results declare > the task index and plugins
    overrides = {**dict(joined.attrs.get("task_categories") or {}), **dict(cfg.benchmarks.task_categories or {})}
    tcats = task_categories(tasks, bench_task_manager(cfg), overrides=overrides, results=run_a.results,
                            taxonomy=get_taxonomy(cfg))
    joined.attrs["task_categories"] = tcats
    if art is None:
        linked = link(joined, tcats, cfg.stats)
    else:
        linked = link(joined, tcats, cfg.stats, shift=art.shift, categories=art.categories, doc_acts=art.doc_acts,
                      causal=art.causal)
    linked["meta"] = {
        "models": joined.attrs.get("models"),
        "inputs": {"base": str(run_a.path), "finetuned": str(run_b.path),
                   "diff": str(art.source) if art is not None and art.source else None},
        "n_documents": int(len(joined)),
        "n_shot": joined.attrs.get("n_shot"),
        "limit": joined.attrs.get("limit"),
        "task_categories": tcats,
    }
    return linked


def report_dict(cfg: RunConfig, linked: dict, art: Optional[DiffArtifacts]) -> dict:
    """The report dict from the link stage's result and the latent-side outputs (formatting only)."""
    meta = dict(linked["meta"])
    if cfg.name == "run":
        meta["title"] = "lm_diff report: " + (" vs ".join(str(v) for v in (meta.get("models") or {}).values()) or "run")
    kw: dict[str, Any] = {}
    if art is not None:
        kw = {"latents": art.latents, "cards": cards_from(art), "quality": art.quality,
              "controls": art.controls, "organism": art.organism}
    return build_report(config=cfg, linked=linked["categories"], scores=linked["scores"], meta=meta, **kw)


def build_from_runs(base: str | Path, finetuned: str | Path, diff: Optional[str | Path] = None, config: Any = None) -> dict:
    """Build (but do not write) the report dict from lm-eval outputs and optional finished stage outputs."""
    art = read_diff_artifacts(diff) if diff else None
    cfg = resolve_config(config, art.config_path if art else None)
    return report_dict(cfg, link_outputs(cfg, base, finetuned, art), art)


def _formats(report: dict) -> list[str]:
    return ((report.get("run") or {}).get("config") or {}).get("report", {}).get("formats") or list(DEFAULT_FORMATS)


def report_from_runs(base: str | Path, finetuned: str | Path, diff: Optional[str | Path] = None,
                     out: str | Path = Path("report"), config: Any = None, formats: Optional[list[str]] = None,
                     quiet: bool = False) -> dict:
    """``lm-diff report``: build the report and write it to ``out`` (formats from the config unless given)."""
    report = build_from_runs(base, finetuned, diff, config)
    paths = write_report(report, out, formats or _formats(report))
    if not quiet:
        con = console.out()
        print_summary(report, con)
        for fmt, p in paths.items():
            con.print(f"[bold green]report[/bold green] ({fmt}): {escape(str(p))}")
    return report


def ci(base: str | Path, finetuned: str | Path, diff: Optional[str | Path] = None, rules: Optional[list[str]] = None,
       summary: Optional[str | Path] = None, out: Optional[str | Path] = None, config: Any = None) -> int:
    """``lm-diff ci``: exit code 1 when a ``--fail-on`` rule fails, else 0 (bad input raises UserError → exit 2).

    The Markdown summary goes to ``summary`` (overwritten), else appended to ``$GITHUB_STEP_SUMMARY`` when set, else
    printed. ``out`` also writes the full report there.
    """
    parsed = [parse_rule(r) for r in (rules or [])]  # bad rules fail before any work
    report = build_from_runs(base, finetuned, diff, config)
    results = evaluate_rules(parsed, report)
    if out:
        write_report(report, out, _formats(report))
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
        val = f"{r.value:.{r.decimals}f}" if r.value is not None else f"n/a ({r.note})"
        print(f"[{status}] {r.rule.text}: {val}", file=sys.stderr)
    return 1 if any(r.failed for r in results) else 0


# ----------------------------------------------------------------------------------------------------------------------
# Stages


def grounding_provenance(index: list[dict]) -> Optional[dict]:
    """``{category: {"source", "n"}}`` of the grounding prompts of a capture index whose rows say where they came from
    (``benchmark:TASK``, ``builtin``, ``corpus:PATH``); None when none do (a JSONL or organism set)."""
    out: dict[str, dict] = {}
    for r in index:
        if r.get("kind") != "grounding" or not r.get("source"):
            continue
        src = str(r["source"]).split(":", 1)[0]
        row = out.setdefault(r["category"], {"source": src, "n": 0})
        row["n"] += 1
        if row["source"] != src:
            row["source"] = "mixed"
    return out or None



def link_stage(cfg: RunConfig, stages: Stages, evals: dict[str, Path], inputs: dict[str, Path]) -> Path:
    """``link``: keyed on the benchmark runs, the latent-side stages it reads, ``stats.*`` and the task selection."""
    b = cfg.benchmarks
    key = {"evals": {r: p.parent.name for r, p in evals.items()}, "inputs": {a: d.name for a, d in inputs.items()},
           "stats": dataclasses.asdict(cfg.stats),
           "benchmarks": {"tasks": b.tasks, "task_categories": b.task_categories, "include_path": b.include_path},
           "version": 1}

    def fn(d: Path) -> dict:
        linked = link_outputs(cfg, evals["A"], evals["B"], read_outputs(inputs))
        write_json(d / "link.json", linked)
        return {"categories": len(linked["categories"])}

    d, _ = stages.run("link", key, fn, label="linkage (score gaps, exposure, association, agreement)")
    return d


def report_stage(cfg: RunConfig, stages: Stages, link_dir: Path, inputs: dict[str, Path],
                 organism: Optional[dict], grounding: Optional[dict] = None) -> tuple[Path, dict]:
    """``report``: the report dict (report.json in the stage), keyed on the link stage, the stages it shows and the
    whole config (the report embeds it). ``grounding``: where each category's grounding prompts came from
    (:func:`grounding_provenance`), shown under ``run.grounding`` when a category is not grounded on its benchmark."""
    key = {"link": link_dir.name, "inputs": {a: d.name for a, d in inputs.items()}, "config": cfg.to_dict(),
           "organism": organism, "version": 2, **({"grounding": grounding} if grounding else {})}

    def fn(d: Path) -> dict:
        if organism:
            write_json(d / "organism.json", organism)
        art = read_outputs({**inputs, **({"organism": d} if organism else {})})
        linked = read_json(link_dir / "link.json")
        if grounding:
            linked["meta"]["grounding"] = grounding
        write_json(d / "report.json", report_dict(cfg, linked, art))
        return {}

    d, _ = stages.run("report", key, fn, label="report")
    return d, read_json(d / "report.json")


__all__ = ["build_from_runs", "report_from_runs", "ci", "link_stage", "report_stage", "find_outputs",
           "grounding_provenance"]
