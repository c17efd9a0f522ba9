"""The terminal summary of a report: the summary sentences, the verdicts, and a category table that fits 80 columns
(full category names); everything else is in the report files."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from rich import box
from rich.markup import escape
from rich.table import Table

from lm_diff import console as _console
from lm_diff.link.table import as_float as _f
from lm_diff.report.markdown import fmt_num, fmt_p
from lm_diff.report.summary import significant_change, significant_gap


def _gap_cell(g: dict) -> str:
    if not g or _f(g.get("delta")) is None:
        return "–"
    lo, hi = _f(g.get("ci_low")), _f(g.get("ci_high"))
    ci = f" [{lo:+.0f}, {hi:+.0f}]" if lo is not None and hi is not None and lo != hi else ""
    return f"{_f(g['delta']):+.0f}{ci}"


def _ratio_cell(ls: dict) -> str:
    if not ls:
        return "–"
    if ls.get("insufficient"):
        return "too few"
    r = _f(ls.get("share_ratio"))
    if r is None:
        return "one side"
    return f"×{r + 1:.2g}"


def category_table(report: dict) -> Table:
    """category | Δscore pts [CI] | ppl | changed | latents S/T | share ratio (×) | q: at most 80 columns."""
    t = Table(title="categories", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    t.add_column("category", no_wrap=True)
    t.add_column("Δscore pts [CI]", no_wrap=True)
    t.add_column("ppl", no_wrap=True, justify="right")
    t.add_column("changed", no_wrap=True, justify="right")
    t.add_column("S/T", no_wrap=True, justify="right")
    t.add_column("ratio", no_wrap=True, justify="right")
    t.add_column("q", no_wrap=True, justify="right")
    for c in report["categories"]:
        ls, g = c.get("latent_shift") or {}, c.get("score_gap") or {}
        n = f"{int(_f(ls.get('n_S')) or 0)}/{int(_f(ls.get('n_T')) or 0)}" if ls else "–"
        t.add_row(escape(c["name"]), _gap_cell(g), _ppl_cell(c.get("perplexity_gap")),
                  _change_cell(c.get("latent_change")), n, _ratio_cell(ls), fmt_p(ls.get("q_value")) if ls else "–")
    return t


def _ppl_cell(pg: Optional[Mapping]) -> str:
    """B's byte perplexity over A's on the category's probe (``×0.93``), ``*`` when its CI excludes no change."""
    d = _f((pg or {}).get("delta"))
    if d is None:
        return "–"
    return f"×{math.exp(-d):.2f}" + ("*" if significant_gap(pg) else "")


def _change_cell(lc: Optional[Mapping]) -> str:
    """The category change test, the latent half's headline (docs/method.md#category-change): ``+467%*`` (* changed:
    q ≤ 0.05 and an interval above no change), ``few`` when insufficient."""
    if not lc:
        return "–"
    r = _f(lc.get("ratio"))
    if lc.get("insufficient") or r is None:
        return "few" if lc.get("insufficient") else "–"
    return f"{100 * r:+.0f}%" + ("*" if significant_change(lc) else "")


def print_summary(report: dict, console: Any = None) -> None:
    """Summary sentences, quality and controls verdicts, the category table; the files have the rest."""
    con = console or _console.out()
    s = report.get("summary") or {}
    if s.get("overall"):
        con.print(f"[bold]{escape(s['overall'])}[/bold]")
    for f in s.get("findings") or []:
        con.print(f"• {escape(f)}")
    if s.get("perplexity"):
        con.print(escape(s["perplexity"]))
    if s.get("changed"):
        con.print(escape(s["changed"]))
    if s.get("unsupported"):
        con.print(f"[yellow]{escape(s['unsupported'])}[/yellow]")
    q = report["quality"]
    if q["available"]:
        style = "green" if q["passed"] else "bold red"
        con.print(f"[{style}]quality gates: {'PASS' if q['passed'] else 'LOW CONFIDENCE'}[/{style}]")
        for g in q["gates"]:
            if g["passed"] is False:
                con.print(f"  [red]FAIL[/red] {escape(str(g['model']))} {g['metric']} = {fmt_num(g['value'], 3)} "
                          f"(gate {g['op']} {g['threshold']})")
    else:
        con.print("[yellow]benchmarks-only report[/yellow] (no crosscoder artifacts)")
    if s.get("controls"):
        con.print(escape(s["controls"]))
    con.print(category_table(report))
    con.print("ppl: B's byte perplexity over A's on held-out category text (* CI excludes no change); "
              "changed (the latent headline): share among A- and B-specific latents over share among shared ones, "
              "either way (* q ≤ 0.05, CI above no change); "
              "ratio (direction, the seed paper's statistic): share among fine-tune-specific latents (S) over share "
              "among the comparison set (T); q: label-permutation test, BH. "
              "Latent browser, tasks and caveats: report.html / report.md.",
              style="dim")
