"""The report's plain-language summary (``report["summary"]``, docs/report_schema.md#summary): sentences generated
from the results, shown first in report.html, report.md and the terminal. It states findings only from the report's
own numbers; it computes nothing new.

A category *moves on the benchmarks* when its score-gap CI excludes 0. Its *latents changed* (the latent half's
headline, docs/method.md#category-change) when the model-specific latents (S ∪ T) over-represent it against the
shared latents at change q ≤ ``1 − stats.confidence`` with an interval above no change; that says what the fine-tune
changed, not in which direction, which the benchmark and perplexity gaps give. Its *latents shift* (the seed paper's
direction statistic, kept for comparability) when the S-vs-T share ratio's q is at most ``1 − stats.confidence`` and
the category has enough latents (not ``insufficient``). Its *held-out text moves* when its perplexity probe's CI
(log-likelihood per byte, docs/method.md#perplexity-probes) excludes 0; that is said next to the others, never
instead of them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from lm_diff.link.table import as_float as _f

__all__ = ["build_summary", "summary_lines", "significant_gap", "significant_shift", "significant_change",
           "perplexity_text", "change_text"]


def _pct(x: Optional[float]) -> str:
    if x is None:
        return "unbounded"
    return "no change" if x == 0 else f"{100 * x:+.0f} %"


def _ratio_ci(ls: Mapping) -> str:
    lo, hi = _f(ls.get("ci_low")), _f(ls.get("ci_high"))
    return f"[{_pct(lo) if lo is not None else '?'}, {_pct(hi) if hi is not None else 'unbounded'}]"


def _q(x: Any) -> str:
    v = _f(x)
    return "–" if v is None else (f"{v:.2g}" if v >= 0.001 else "< 0.001")


def significant_gap(gap: Optional[Mapping]) -> Optional[int]:
    """+1 / −1 when the score gap's CI lies above / below 0, 0 when it straddles 0, None without a gap."""
    if not gap:
        return None
    lo, hi, d = _f(gap.get("ci_low")), _f(gap.get("ci_high")), _f(gap.get("delta"))
    if lo is None or hi is None or d is None:
        return None
    if lo > 0 or (lo == hi and d > 0):
        return 1
    if hi < 0 or (lo == hi and d < 0):
        return -1
    return 0


def significant_shift(ls: Optional[Mapping], alpha: float = 0.05) -> Optional[int]:
    """+1 / −1 when the latent share ratio is significant (q ≤ alpha) above / below no change, 0 when not, None when
    the category has too few latents to test (``insufficient``) or no shift."""
    if not ls or ls.get("insufficient"):
        return None
    q, r = _f(ls.get("q_value")), _f(ls.get("share_ratio"))
    if q is None:
        return None
    if q > alpha:
        return 0
    if r is None:  # a category with latents on one side only: the sign is the side
        return 1 if (_f(ls.get("n_S")) or 0) > (_f(ls.get("n_T")) or 0) else -1
    return 1 if r > 0 else (-1 if r < 0 else 0)


def significant_change(lc: Optional[Mapping], alpha: float = 0.05) -> Optional[bool]:
    """True when the category changed (change q ≤ alpha, ratio above no change and, when the interval is there, its
    lower end too), False when tested and not, None when insufficient or absent (docs/method.md#category-change)."""
    if not lc or lc.get("insufficient"):
        return None
    q, r, lo = _f(lc.get("q")), _f(lc.get("ratio")), _f(lc.get("ci_low"))
    if q is None:
        return None
    return bool(q <= alpha and (r is None or r > 0) and (lo is None or lo > 0))


def perplexity_text(pg: Optional[Mapping]) -> Optional[str]:
    """``+0.012 nats/byte [+0.004, +0.020] (byte perplexity ×0.99)`` for a perplexity gap (B − A, higher = B reads
    the text as more likely), None without one."""
    d = _f((pg or {}).get("delta"))
    if d is None:
        return None
    lo, hi = _f(pg.get("ci_low")), _f(pg.get("ci_high"))
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
    return f"{d:+.3f} {pg.get('unit') or 'nats/byte'}{ci} (byte perplexity ×{math.exp(-d):.3g})"


def _probe_clause(c: Mapping) -> Optional[str]:
    pg = c.get("perplexity_gap")
    text = perplexity_text(pg)
    if text is None:
        return None
    g = significant_gap(pg)
    verb = {1: "B reads it better", -1: "B reads it worse", 0: "no significant change"}.get(g, "untested")
    return f"held-out {c['name']} text {text}: {verb}"


def _finding(c: Mapping, alpha: float) -> Optional[str]:
    gap, ls, causal = c.get("score_gap") or {}, c.get("latent_shift") or {}, c.get("causal") or {}
    lc = c.get("latent_change") or {}
    g, s, ch = significant_gap(gap), significant_shift(ls, alpha), significant_change(lc, alpha)
    if not g and not s and not ch:
        return None
    name = c["name"]
    parts = []
    if g:
        tasks = ", ".join(gap.get("tasks") or []) or "its tasks"
        ci = f" [{_f(gap['ci_low']):+.0f}, {_f(gap['ci_high']):+.0f}]" if _f(gap.get("ci_low")) != _f(gap.get("ci_high")) else ""
        parts.append(f"B {'gains' if g > 0 else 'loses'} {name} ({_f(gap['delta']):+.0f} pts{ci} on {tasks})")
    else:
        parts.append(f"{name} does not move on the benchmarks" if gap else f"{name} has no benchmark task")
    if ch is not None:
        n_x, n_sh = int(_f(lc.get("n_specific")) or 0), int(_f(lc.get("n_shared")) or 0)
        what = "its latents changed" if ch else "its latents did not change significantly"
        parts.append(f"{what} ({n_x} model-specific vs {n_sh} shared latents, enrichment {change_text(lc)}"
                     f"{'' if ch else _not_detectable(lc)})")
    if ls and not ls.get("insufficient"):
        n_s, n_t = int(_f(ls.get("n_S")) or 0), int(_f(ls.get("n_T")) or 0)
        r = _f(ls.get("share_ratio"))
        ratio = f"share ratio {_pct(r)} {_ratio_ci(ls)}" if r is not None else "share ratio unbounded"
        verdict = "" if s else f" ({_not_significant(ls, r)})"
        parts.append(f"direction: {n_s} fine-tune-specific {name} latent{'s' * (n_s != 1)} vs {n_t} base-specific, "
                     f"{ratio}, q {_q(ls.get('q_value'))}{verdict}")
    frac = _f(causal.get("fraction"))
    if frac is not None and g:
        parts.append(f"ablating them closes {f'{100 * frac:.0f}'.replace('-0', '0')} % of the gap")
    probe = _probe_clause(c)
    if probe:
        parts.append(probe)
    return "; ".join(parts) + "."


def _perplexity_only(categories: list) -> Optional[str]:
    """One sentence naming the categories whose held-out text moved while no accuracy gap did (at ceiling, flat, or
    no accuracy task): the case the perplexity probes exist for."""
    cells = [f"{c['name']} ({perplexity_text(c['perplexity_gap'])})" for c in categories
             if significant_gap(c.get("perplexity_gap")) and not significant_gap(c.get("score_gap"))]
    if not cells:
        return None
    return ("Held-out text moved where no accuracy gap did (perplexity probes, B − A): " + "; ".join(cells) + ".")


def _not_significant(ls: Mapping, r: Optional[float]) -> str:
    """"not significant", with the smallest shift in the observed direction the run could have detected
    (``mds_up`` / ``mds_down``, docs/method.md#minimum-detectable-shift) so that n.s. is read as what it is."""
    if "mds_up" not in ls and "mds_down" not in ls:
        return "not significant"
    up = r is None or r >= 0
    mds = _f(ls.get("mds_up" if up else "mds_down"))
    if mds is None:
        return f"not significant; no {'gain' if up else 'loss'} was detectable with this many latents"
    return f"not significant; this run detects a {'gain' if up else 'loss'} of {_pct(mds)} or more"


def _quality_line(q: Mapping) -> str:
    if not q.get("available"):
        return "No crosscoder: a benchmarks-only report (no latent evidence)."
    gates = [g for g in q.get("gates") or [] if g.get("metric") != "identity_control"]
    failed = [f"{g['metric']} of {g['model']}" for g in gates if g.get("passed") is False]
    if failed:
        return f"Quality gates: LOW CONFIDENCE, {len(failed)} of {len(gates)} fail ({', '.join(failed)}); treat latent results as exploratory."
    evs = [v.get("ev") for v in (q.get("models") or {}).values() if _f(v.get("ev")) is not None]
    ev = f" (explained variance {', '.join(f'{x:.2f}' for x in evs)})" if evs else ""
    return f"Quality gates: all {len(gates)} pass{ev}."


def _controls_line(controls: Mapping, quality: Mapping) -> str:
    bits = []
    ident = controls.get("identity") if isinstance(controls.get("identity"), Mapping) else None
    if ident is not None and "passed" in ident:
        n = ident.get("n_b_specific", ident.get("specific_latents"))
        n_txt = f", {int(n)} specific latents on (A, A)" if _f(n) is not None else ""
        bits.append(f"identity control {'passes' if ident['passed'] else 'FAILS'}{n_txt}")
    seeds = (controls.get("seeds") or {}).get("seeds") if isinstance(controls.get("seeds"), Mapping) else None
    if seeds and len(seeds) > 1:
        bits.append(f"{len(seeds)} crosscoder seeds pooled")
    rep = controls.get("reproducibility") or {}
    vals = [_f(v.get("B_specific_reproducibility")) for v in rep.values() if isinstance(v, Mapping)]
    vals = [v for v in vals if v is not None]
    if vals:
        bits.append(f"{100 * vals[0]:.0f} % of fine-tune-specific latents reappear in another seed")
    if not bits:
        return "Controls: none were run." if quality.get("available") else "Controls: none (benchmarks only)."
    return "Controls: " + "; ".join(bits) + "."


def change_text(lc: Optional[Mapping]) -> str:
    """The compact cell of a category's ``latent_change`` ("+467 % [+210 %, +890 %] q 0.001"; "insufficient"; "–"
    when absent)."""
    if not lc:
        return "–"
    if lc.get("insufficient"):
        return "insufficient"
    r, q = _f(lc.get("ratio")), _f(lc.get("q"))
    ratio = "unbounded" if r is None else f"{100 * r:+.0f} %"
    ci = f" {_ratio_ci(lc)}" if "ci_low" in lc else ""
    return f"{ratio}{ci} q {_q(q)}"


def _not_detectable(lc: Mapping) -> str:
    """"; this run detects an enrichment of +X % or more" from ``latent_change.mds`` (empty without it)."""
    if "mds" not in lc:
        return ""
    mds = _f(lc.get("mds"))
    if mds is None:
        return "; no enrichment was detectable with this many latents"
    return f"; this run detects an enrichment of {_pct(mds)} or more"


def _changed(categories: list, alpha: float) -> Optional[str]:
    """One sentence naming the categories whose model-specific latents are enriched at change q ≤ alpha."""
    hits = [c for c in categories if significant_change(c.get("latent_change"), alpha)]
    if not hits:
        return None
    cells = [f"{c['name']} ({change_text(c['latent_change'])})" for c in hits]
    return ("Changed by the fine-tune, either way (model-specific latents of A and B enriched against the shared "
            f"ones, q ≤ {alpha:g}): " + "; ".join(cells) + ". This says which categories changed, not in which direction.")


def _unsupported(categories: list, alpha: float) -> Optional[str]:
    """The categories the latent headline cannot test (``latent_change`` insufficient), or, in a report without the
    change test, those the share ratio cannot."""
    cells = []
    for c in categories:
        if c["name"] == "unassigned":
            continue
        lc, ls = c.get("latent_change"), c.get("latent_shift") or {}
        if lc and lc.get("insufficient"):
            cells.append(f"{c['name']} ({int(_f(lc.get('n_specific')) or 0)} model-specific, "
                         f"{int(_f(lc.get('n_shared')) or 0)} shared latents)")
        elif not lc and ls.get("insufficient"):
            cells.append(f"{c['name']} ({int(_f(ls.get('n_S')) or 0)} vs {int(_f(ls.get('n_T')) or 0)} latents)")
    if not cells:
        return None
    return "Too few latents to say anything about " + ", ".join(cells) + "."


def build_summary(report: Mapping, alpha: float = 0.05) -> dict:
    """``{"findings": [sentence per category that moves], "overall", "quality", "controls", "unsupported",
    "organism", "perplexity", "changed"}`` (strings; None where there is nothing to say)."""
    cats = [c for c in report.get("categories") or [] if c.get("name") != "unassigned"]
    order = {n: i for i, n in enumerate(report.get("ranking") or [])}
    cats_sorted = sorted(cats, key=lambda c: (significant_gap(c.get("score_gap")) in (None, 0),
                                              order.get(c["name"], math.inf), c["name"]))
    findings = [s for c in cats_sorted if (s := _finding(c, alpha))]
    if not findings:
        findings = ["No category moves: no benchmark gap excludes 0 and no category's latents changed or shifted."]
    o = report.get("overall")
    overall = None
    if o and _f(o.get("delta")) is not None:
        ci = f" [{_f(o['ci_low']):+.1f}, {_f(o['ci_high']):+.1f}]" if _f(o.get("ci_low")) is not None else ""
        overall = f"Overall, B − A = {_f(o['delta']):+.1f} points{ci} over {o.get('n')} benchmark documents."
    org = report.get("organism") or {}
    org_line = None
    if org.get("top_category") is not None:
        planted = [c["name"] for c in report.get("categories") or [] if c.get("planted")]
        org_line = (f"Model organism: planted {', '.join(planted) or 'nothing'}; the top-ranked category is "
                    f"{org['top_category']} ({'recovered' if org.get('recovered') else 'not a planted one'}).")
    return {"overall": overall, "findings": findings, "quality": _quality_line(report.get("quality") or {}),
            "controls": _controls_line(report.get("controls") or {}, report.get("quality") or {}),
            "unsupported": _unsupported(cats, alpha), "organism": org_line, "perplexity": _perplexity_only(cats),
            "changed": _changed(cats, alpha)}


def summary_lines(summary: Optional[Mapping]) -> list[str]:
    """The summary as sentences in reading order (overall, findings, perplexity, changed, unsupported, quality,
    controls, organism)."""
    if not summary:
        return []
    s = summary
    return [x for x in (s.get("overall"), *(s.get("findings") or []), s.get("perplexity"), s.get("changed"), s.get("unsupported"), s.get("quality"),
                        s.get("controls"), s.get("organism")) if x]
