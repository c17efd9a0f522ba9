"""Text formatting of the report: number cells, the Markdown report, the category rows shared by the Markdown, HTML
and terminal views, and the CI job summary."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from lm_diff.link.table import as_float as _f
from lm_diff.report.summary import change_text


def fmt_num(x: Any, nd: int = 1, signed: bool = False) -> str:
    v = _f(x)
    if v is None:
        return "–"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def fmt_ci(lo: Any, hi: Any, nd: int = 1) -> str:
    if _f(lo) is None and _f(hi) is None:
        return ""
    return f"[{fmt_num(lo, nd, True)}, {fmt_num(hi, nd, True)}]"


def fmt_pct(x: Any) -> str:
    v = _f(x)
    return "–" if v is None else f"{100 * v:+.1f}%"


def fmt_p(x: Any) -> str:
    v = _f(x)
    if v is None:
        return "–"
    return f"{v:.2g}" if v >= 0.001 else "<0.001"


def agreement_label(a: Any) -> str:
    return {True: "agree", False: "disagree"}.get(a, "n.s.")


_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(x: Any) -> str:
    """Plain Markdown text on one line: backslashes escaped, and a ``<`` that could open an HTML tag written as
    ``\\<`` (a Markdown escape, not an HTML entity), so dataset text never becomes markup."""
    s = "" if x is None else str(x)
    s = s.replace("\\", "\\\\").replace("\n", " ").replace("\r", " ")
    return _TAG_START.sub(r"\\<", s)


def _md_cell(x: Any) -> str:
    """:func:`_md_text` for a table cell: pipes escaped too."""
    return _md_text(x).replace("|", "\\|")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return lines



def gates_lines(report: dict) -> list[str]:
    q = report["quality"]
    if not q["available"]:
        return ["_No crosscoder quality metrics (benchmarks-only report)._"]
    verdict = "**PASS**" if q["passed"] else "**LOW CONFIDENCE**"
    lines = [f"Verdict: {verdict}", ""]
    rows = []
    for g in q["gates"]:
        mark = {True: "pass", False: "FAIL", None: "missing"}[g["passed"]]
        v = g["value"]
        rows.append([g["model"], g["metric"], fmt_num(v, 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v, f"{g['op']} {g['threshold']}", mark])
    lines += md_table(["model", "metric", "value", "gate", "result"], rows)
    lines.append("")
    mrows = []
    for m, v in q["models"].items():
        mrows.append([m, fmt_num(v.get("ev"), 3), fmt_num(v.get("l0"), 1), fmt_num(v.get("dead_fraction"), 3), fmt_num(v.get("delta_ce"), 3), fmt_num(v.get("kl"), 3)])
    lines += md_table(["model", "EV", "L0", "dead", "spliced ΔCE", "KL"], mrows)
    return lines



def _q_cell(ls: Mapping) -> str:
    """``q`` (BH over all categories), with the linked-family q after a slash when there is one."""
    q = fmt_p(ls.get("q_value"))
    return q if ls.get("q_linked") is None else f"{q} / {fmt_p(ls['q_linked'])}"


def category_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["categories"]:
        ls, g, ex, a, k = c.get("latent_shift") or {}, c.get("score_gap") or {}, c.get("exposure") or {}, c.get("association") or {}, c.get("causal") or {}
        rows.append([
            c["name"] + ({1: " (planted +)", -1: " (planted −)"}.get(c.get("planted_sign") or 0, "")),
            f"{fmt_num(g.get('delta'), 1, True)} {fmt_ci(g.get('ci_low'), g.get('ci_high'))}".strip() if g else "–",
            perplexity_cell(c.get("perplexity_gap")),
            change_text(c.get("latent_change")),
            f"{fmt_pct(ls.get('share_ratio'))} [{fmt_pct(ls.get('ci_low'))}, {fmt_pct(ls.get('ci_high'))}]" if ls else "–",
            fmt_pct(ls.get("count_ratio")) if ls else "–",
            _q_cell(ls) if ls else "–",
            f"{ls.get('n_S', '–')}/{ls.get('n_T', '–')}" + (" insufficient" if ls.get("insufficient") else "") if ls else "–",
            f"{fmt_num(ex.get('S'), 2)} / {fmt_num(ex.get('T'), 2)}" if ex else "–",
            f"{fmt_num(a.get('r'), 2, True)} (p {fmt_p(a.get('p_value'))})" if a else "–",
            fmt_num(k.get("fraction"), 2) + (f" (rand {fmt_num(k.get('random_fraction'), 2)})" if k.get("random_fraction") is not None else "") if k else "–",
            _seed_cell(c.get("seed_signs")),
            agreement_label(c.get("agreement")),
        ])
    return rows


def _seed_cell(s: Optional[Mapping]) -> str:
    """``3/3 +`` when every seed agrees, else ``2+ 1−`` (seeds whose share ratio is above / below no change), then
    ``1 n/a`` for seeds with no latent of the category in either set."""
    if not s:
        return "–"
    p, m, n = s["positive"], s["negative"], s["n"]
    if p == n:
        return f"{n}/{n} +"
    if m == n:
        return f"{n}/{n} −"
    rest = n - p - m  # seeds with no latent of the category on either side, or exactly no change
    return f"{p}+ {m}−" + (f" {rest} n/a" if rest else "")


def perplexity_cell(pg: Optional[Mapping]) -> str:
    """A perplexity probe's gap: ``+0.0123 [+0.0040, +0.0210] ×0.988`` (nats/byte, CI, B's byte perplexity over
    A's), ``–`` without one."""
    d = _f((pg or {}).get("delta"))
    if d is None:
        return "–"
    return f"{fmt_num(d, 4, True)} {fmt_ci(pg.get('ci_low'), pg.get('ci_high'), 4)} ×{math.exp(-d):.3g}".replace("  ", " ")


def _task_nd(t: Mapping) -> int:
    return 1 if (t.get("unit") or "points") in ("points", "raw") else 4


def resolution_note(report: Mapping) -> str:
    """What the "detectable |Δ|" column means, with the run's α and power."""
    st = (((report.get("run") or {}).get("config") or {}).get("stats") or {})
    alpha, power = 1 - float(st.get("confidence", 0.95)), float(st.get("power", 0.8))
    return (f"detectable |Δ| is the smallest gap the task's items resolve at α = {alpha:.2g} with power {power:.2g} "
            "(docs/method.md#task-resolution).")


TASK_HEADERS = ["task", "category", "metric", "n", "A", "B", "Δ", "CI", "p", "detectable |Δ|", "unit"]
"""The tasks table of report.md and report.html; "detectable |Δ|" is the task's minimum detectable gap at the run's
α and power (docs/method.md#task-resolution)."""


def task_rows(report: dict) -> list[list[Any]]:
    """One row per task (:data:`TASK_HEADERS`); perplexity probes in nats/byte with 4 decimals, accuracy in points."""
    rows = []
    for t in report.get("tasks") or []:
        nd = _task_nd(t)
        rows.append([t["name"], t.get("category"), t.get("metric"), t.get("n"), fmt_num(t.get("score_a"), nd),
                     fmt_num(t.get("score_b"), nd), fmt_num(t.get("delta"), nd, True),
                     fmt_ci(t.get("ci_low"), t.get("ci_high"), nd), fmt_p(t.get("p_value")),
                     fmt_num(t.get("mds"), nd) if _f(t.get("mds")) is not None else "–", t.get("unit") or "–"])
    return rows


CATEGORY_HEADERS = ["category", "Δscore (pts) [CI]", "perplexity Δ (nats/byte) [CI] ×ppl",
                    "latents changed, either way [CI] q", "direction: share ratio S/T [CI]", "count ratio",
                    "q all / linked", "n_S/n_T", "exposure S/T",
                    "assoc. r (p)", "causal frac.", "seeds", "sign"]


def _example_md(e: Mapping, top: float) -> str:
    """One example window; tokens at half the latent's maximum activation or more are wrapped in ⟦ ⟧."""
    toks, acts = e.get("tokens") or [], e.get("acts") or []
    if toks and len(toks) == len(acts):
        text = "".join(f"⟦{t}⟧" if top > 0 and a >= top / 2 else t for t, a in zip(toks, acts))
    else:
        text = e.get("text") or ""
    return f"- {fmt_num(e.get('act'), 2)}: {_md_text(text)}"


def cards_markdown(cards: Sequence[Mapping], per_set: int, n_examples: int = 2) -> list[str]:
    """The ``per_set`` first latent cards of S and of T, ``n_examples`` examples each (report.html has them all)."""
    L = []
    for set_name in ("S", "T"):
        shown = [c for c in cards if c.get("set") == set_name][:per_set]
        total = sum(c.get("set") == set_name for c in cards)
        if not shown:
            continue
        word = "fine-tune-specific" if set_name == "S" else "comparison"
        L += [f"### {set_name} ({word}): {len(shown)} of {total} latents", ""]
        for c in shown:
            cats = ", ".join(e.get("category") for e in c.get("categories") or [] if e.get("category")) or c.get("category") or "unassigned"
            L.append(f"**Latent {c['latent']}** ({_md_cell(cats)}): Δnorm {fmt_num(c.get('delta_norm'), 3)}, "
                     f"ν^ε {fmt_num(c.get('nu_eps'), 3)}, ν^r {fmt_num(c.get('nu_r'), 3)}")
            L.append("")
            ex = c.get("examples") or []
            top = max([_f(c.get("max_act")) or 0.0] + [a for e in ex for a in e.get("acts") or []])
            L += [_example_md(e, top) for e in ex[:n_examples]] or [f"- no examples: {_md_cell(c.get('no_examples'))}"]
            L.append("")
    return L


def to_markdown(report: dict, cards_per_set: Optional[int] = None) -> str:
    """The Markdown report, in the HTML report's order: summary, quality and controls, categories, tasks, latents,
    organism, caveats. Plain Markdown (no HTML); the raw controls stay in report.json. ``cards_per_set``: latent
    cards shown per set (default ``report.latent_cards`` of the run's config)."""
    if cards_per_set is None:
        cfg = ((report.get("run") or {}).get("config") or {}).get("report") or {}
        cards_per_set = int(cfg.get("latent_cards", 12))
    L = [f"# {_md_cell(report['title'])}", ""]
    models = (report.get("run") or {}).get("models") or {}
    if models:
        L.append("Models: " + ", ".join(f"**{k}** = `{_md_cell(v)}`" for k, v in models.items() if v))
        L.append("")
    s = report.get("summary") or {}
    L += ["## Summary", ""]
    if s.get("overall"):
        L += [f"**{_md_text(s['overall'])}**", ""]
    L += [f"- {_md_text(f)}" for f in s.get("findings") or []] + [""]
    for k in ("perplexity", "changed", "unsupported", "organism"):
        if s.get(k):
            L += [_md_text(s[k]), ""]
    L += ["## Quality and controls", ""]
    L += [f"- {_md_text(s[k])}" for k in ("quality", "controls") if s.get(k)] + [""]
    L += gates_lines(report) + [""]
    L += ["## Categories", ""] + md_table(CATEGORY_HEADERS, category_rows(report)) + [""]
    if report["tasks"]:
        L += ["## Tasks", ""]
        L += md_table(TASK_HEADERS, task_rows(report))
        L += ["", f"Δ is B − A (positive: B better); {resolution_note(report)}", ""]
    if report.get("latent_cards") or report.get("selection_counts"):
        L += ["## Latents", ""]
        if report.get("selection_counts"):
            L += md_table(["selection stage", "count"], list(report["selection_counts"].items())) + [""]
        if report.get("latent_cards"):
            L += ["Tokens in ⟦ ⟧ carry at least half the latent's maximum activation; report.html has every latent with "
                  "search, filters, histograms and output tokens.", ""]
            L += cards_markdown(report["latent_cards"], cards_per_set)
    if report.get("organism"):
        org = report["organism"]
        L += ["## Model organism", "", f"Planted: {_md_cell(', '.join(c['name'] for c in report['categories'] if c.get('planted')))}; "
              f"top-ranked category: {_md_cell(org.get('top_category'))}; recovered: {org.get('recovered')}", ""]
    L += ["## Caveats", ""] + [f"- {_md_text(c)}" for c in report["caveats"]] + [""]
    for sec in report.get("sections") or []:
        L += [f"## {_md_cell(sec['title'])}", "", sec["markdown"], ""]
    if report.get("controls"):
        L += ["The raw control results (seeds, reproducibility, selection, identity) are under `controls` in report.json.", ""]
    L.append(f"_{report['schema']} · lm_diff {report['lm_diff_version']} · {report['generated_at']}_")
    return "\n".join(L) + "\n"



def ci_summary_markdown(report: dict, results: list, report_dir: Optional[Path] = None) -> str:
    """Markdown fit for a CI job summary: verdict, rules, quality gates, overall and per-category gaps."""
    failed = [r for r in results if r.failed]
    lines = ["## lm-diff regression check", ""]
    if results:
        lines.append(f"**{'❌ FAILED' if failed else '✅ PASSED'}**: {len(failed)} of {len(results)} rule(s) failed.")
    else:
        lines.append("No `--fail-on` rules given: report only.")
    lines.append("")
    if results:
        lines += md_table(["rule", "value", "result"],
                           [[r.rule.text, fmt_num(r.value, r.decimals) if r.value is not None else f"n/a ({r.note})",
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
        lines += md_table(["category", "Δscore (pts) [CI]", "latent share ratio", "sign"], rows) + [""]
    lines += ["<details><summary>Quality gates</summary>", ""] + gates_lines(report) + ["", "</details>", ""]
    if report_dir:
        lines.append(f"Full report: `{report_dir}/report.html`")
    return "\n".join(lines) + "\n"
