"""Self-contained HTML report: inline CSS and inline SVG plots, no external assets, every dataset string escaped.

Plots: Δnorm histogram, ν^ε/ν^r scatter, category bars with CIs (Δscore and share ratio), Δscore per task.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from lm_diff.io import write_text
from lm_diff.link.table import as_float as _f
from lm_diff.report.markdown import CATEGORY_HEADERS, agreement_label, category_rows, fmt_ci, fmt_num, fmt_p

POS, NEG, NEUTRAL, GREY = "#2b8a3e", "#c92a2a", "#1c7ed6", "#868e96"
_RATIO_TICKS = (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)


def esc(x: Any) -> str:
    """Escape any value for HTML text and attribute context."""
    return html.escape("" if x is None else str(x), quote=True)


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{esc(label)}" font-family="system-ui, sans-serif" font-size="12">' + "".join(body) + "</svg>")


def _nice_range(vals: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(vals + [0.0]), max(vals + [0.0])
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=mag)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 and len(out) < 20:
        out.append(round(v, 10))
        v += step
    return out


def bar_chart_ci(items: list[dict], title: str, unit: str = "", width: int = 900, log_ratio: bool = False) -> str:
    """Horizontal bars from 0 with CI whiskers. items: {label, value, lo, hi, note?}. ``log_ratio``: values are R − 1
    and are drawn as log(R) (0 = no change)."""
    floor = math.log(0.02)

    def tr(v):
        if v is None:
            return None
        if log_ratio:
            if math.isinf(v):
                return -floor if v > 0 else floor
            return max(math.log(v + 1), floor) if v > -1 else floor
        return v

    items = [dict(i, _v=tr(_f(i.get("value"))), _lo=tr(_f(i.get("lo"))), _hi=tr(_f(i.get("hi")))) for i in items]
    items = [i for i in items if i["_v"] is not None]
    if not items:
        return f'<p class="muted">{esc(title)}: nothing to plot.</p>'
    longest = max((len(str(i["label"])) for i in items), default=10)
    label_w, row_h, top, bottom = min(380, max(120, 7 * longest + 16)), 26, 30, 34
    h = top + row_h * len(items) + bottom
    vals = [x for i in items for x in (i["_v"], i["_lo"], i["_hi"]) if x is not None and math.isfinite(x)]
    lo, hi = _nice_range(vals)
    x0, x1 = label_w, width - 20

    def X(v):
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    b = [f'<text x="{x0}" y="18" font-weight="600">{esc(title)}</text>']
    ticks = [math.log(r) for r in _RATIO_TICKS if lo <= math.log(r) <= hi] if log_ratio else _ticks(lo, hi)
    for t in ticks:
        lab = f"{100 * (math.exp(t) - 1):+.0f}%" if log_ratio else f"{t:g}"
        b.append(f'<line x1="{X(t):.1f}" y1="{top - 4}" x2="{X(t):.1f}" y2="{h - bottom + 4}" stroke="#e9ecef"/>')
        b.append(f'<text x="{X(t):.1f}" y="{h - bottom + 18}" text-anchor="middle" fill="#495057">{esc(lab)}</text>')
    b.append(f'<line x1="{X(0):.1f}" y1="{top - 6}" x2="{X(0):.1f}" y2="{h - bottom + 6}" stroke="#343a40"/>')
    for k, i in enumerate(items):
        y = top + k * row_h
        v = i["_v"]
        sig = i["_lo"] is not None and i["_hi"] is not None and (i["_lo"] > 0 or i["_hi"] < 0)
        color = (POS if v > 0 else NEG) if sig else GREY
        xa, xb = sorted((X(0), X(v)))
        b.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{esc(i["label"])}</text>')
        b.append(f'<rect x="{xa:.1f}" y="{y + 5}" width="{max(xb - xa, 1):.1f}" height="{row_h - 10}" fill="{color}" opacity="0.85">'
                 f'<title>{esc(i["label"])}: {esc(i.get("text") or fmt_num(i.get("value"), 2, True))}</title></rect>')
        if i["_lo"] is not None and i["_hi"] is not None and math.isfinite(i["_lo"]) and math.isfinite(i["_hi"]):
            yl = y + row_h / 2
            b.append(f'<line x1="{X(i["_lo"]):.1f}" y1="{yl:.1f}" x2="{X(i["_hi"]):.1f}" y2="{yl:.1f}" stroke="#212529" stroke-width="1.5"/>')
            for xv in (i["_lo"], i["_hi"]):
                b.append(f'<line x1="{X(xv):.1f}" y1="{yl - 5:.1f}" x2="{X(xv):.1f}" y2="{yl + 5:.1f}" stroke="#212529" stroke-width="1.5"/>')
        elif log_ratio and i["_lo"] is not None and math.isfinite(i["_lo"]) and i["_hi"] is None:
            # unbounded above (a bootstrap resample without any comparison latent of the category): dashed to the edge
            yl = y + row_h / 2
            b.append(f'<line x1="{X(i["_lo"]):.1f}" y1="{yl:.1f}" x2="{x1:.1f}" y2="{yl:.1f}" stroke="#212529" stroke-width="1.5" stroke-dasharray="4 3">'
                     f'<title>{esc(i["label"])}: CI unbounded above</title></line>')
            b.append(f'<line x1="{X(i["_lo"]):.1f}" y1="{yl - 5:.1f}" x2="{X(i["_lo"]):.1f}" y2="{yl + 5:.1f}" stroke="#212529" stroke-width="1.5"/>')
        if i.get("note"):
            b.append(f'<text x="{x1 + 2}" y="{y + 16}" font-size="10" fill="{GREY}" text-anchor="end">{esc(i["note"])}</text>')
    if unit:
        b.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{h - 2}" text-anchor="middle" fill="#495057">{esc(unit)}</text>')
    return _svg(width, h, b, title)


def histogram(hist: Optional[dict], title: str = "Δnorm histogram", width: int = 500, height: int = 260) -> str:
    if not hist or not hist.get("counts"):
        return f'<p class="muted">{esc(title)}: no per-latent table.</p>'
    edges, counts = hist["edges"], hist["counts"]
    left, right, top, bottom = 50, 20, 30, 40
    cmax = max(max(counts), 1)
    # log-ish scale keeps the tails visible next to the shared bulk
    def Y(c):
        return top + (height - top - bottom) * (1 - math.log1p(c) / math.log1p(cmax))

    def X(v):
        return left + (v - edges[0]) / (edges[-1] - edges[0]) * (width - left - right)

    b = [f'<text x="{left}" y="18" font-weight="600">{esc(title)} (log count)</text>']
    thr = hist.get("thresholds") or []
    for k, c in enumerate(counts):
        xa, xb = X(edges[k]), X(edges[k + 1])
        mid = (edges[k] + edges[k + 1]) / 2
        color = POS if thr and mid >= thr[-1] else (NEG if thr and mid <= thr[0] else NEUTRAL)
        b.append(f'<rect x="{xa + 0.5:.1f}" y="{Y(c):.1f}" width="{max(xb - xa - 1, 1):.1f}" height="{height - bottom - Y(c):.1f}" fill="{color}">'
                 f'<title>[{edges[k]:.2f}, {edges[k + 1]:.2f}): {c}</title></rect>')
    for t in thr:
        b.append(f'<line x1="{X(t):.1f}" y1="{top}" x2="{X(t):.1f}" y2="{height - bottom}" stroke="#343a40" stroke-dasharray="4 3"/>')
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        b.append(f'<text x="{X(t):.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="#495057">{t:g}</text>')
    b.append(f'<text x="{left}" y="{height - 4}" fill="#495057">0 = base (A) only</text>')
    b.append(f'<text x="{width - right}" y="{height - 4}" text-anchor="end" fill="#495057">1 = fine-tune (B) only</text>')
    b.append(f'<text x="{left - 6}" y="{Y(cmax) + 4:.1f}" text-anchor="end" fill="#495057">{cmax}</text>')
    return _svg(width, height, b, title)


def scatter(points: list[dict], thresholds: Optional[dict], title: str = "Latent scaling ν^ε vs ν^r", width: int = 500, height: int = 260) -> str:
    pts = [p for p in points if _f(p.get("nu_eps")) is not None and _f(p.get("nu_r")) is not None]
    if not pts:
        return f'<p class="muted">{esc(title)}: no latent-scaling table.</p>'
    left, right, top, bottom = 50, 20, 30, 40
    xs, ys = [p["nu_eps"] for p in pts], [p["nu_r"] for p in pts]
    xlo, xhi = min(xs + [0.0]), max(xs + [1.0])
    ylo, yhi = min(ys + [0.0]), max(ys + [1.0])

    def X(v):
        return left + (v - xlo) / (xhi - xlo) * (width - left - right)

    def Y(v):
        return top + (1 - (v - ylo) / (yhi - ylo)) * (height - top - bottom)

    b = [f'<text x="{left}" y="18" font-weight="600">{esc(title)}</text>',
         f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#ced4da"/>']
    th = thresholds or {}
    if th.get("nu_eps_max") is not None and th.get("nu_r_max") is not None:
        ya = Y(min(th["nu_r_max"], yhi))
        b.append(f'<rect x="{X(xlo):.1f}" y="{ya:.1f}" width="{X(th["nu_eps_max"]) - X(xlo):.1f}" height="{Y(ylo) - ya:.1f}" '
                 f'fill="{POS}" opacity="0.08"><title>kept: ν^ε &lt; {th["nu_eps_max"]}, ν^r &lt; {th["nu_r_max"]}</title></rect>')
    for p in pts:
        color = POS if p.get("set") == "S" else (NEG if p.get("set") == "T" else NEUTRAL)
        fill = color if p.get("selected") else "none"
        b.append(f'<circle cx="{X(p["nu_eps"]):.1f}" cy="{Y(p["nu_r"]):.1f}" r="3.5" stroke="{color}" fill="{fill}">'
                 f'<title>latent {esc(p.get("latent"))} ({esc(p.get("set"))}): ν^ε={p["nu_eps"]:.3f}, ν^r={p["nu_r"]:.3f}</title></circle>')
    for t in _ticks(xlo, xhi, 5):
        b.append(f'<text x="{X(t):.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="#495057">{t:g}</text>')
    for t in _ticks(ylo, yhi, 4):
        b.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" fill="#495057">{t:g}</text>')
    b.append(f'<text x="{(width + left) / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="#495057">ν^ε (error ratio)</text>')
    b.append(f'<text x="12" y="{(height) / 2:.1f}" fill="#495057" transform="rotate(-90 12 {height / 2:.1f})" text-anchor="middle">ν^r</text>')
    b.append(f'<text x="{width - right}" y="{top + 14}" text-anchor="end" font-size="11"><tspan fill="{POS}">● S (fine-tune)</tspan> '
             f'<tspan fill="{NEG}">● T (comparison)</tspan> <tspan fill="{GREY}">○ filtered out</tspan></text>')
    return _svg(width, height, b, title)


# ----------------------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f8f9fa;color:#212529}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{border-bottom:1px solid #dee2e6;padding-bottom:4px;margin-top:32px}
.card{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:14px 18px;margin:12px 0}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
th,td{border-bottom:1px solid #e9ecef;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5;font-weight:600}
.pass{color:#2b8a3e;font-weight:600}.fail{color:#c92a2a;font-weight:700}.muted{color:#868e96}
.banner{padding:10px 14px;border-radius:8px;font-weight:600;margin:10px 0}
.banner.ok{background:#d3f9d8;color:#2b8a3e}.banner.low{background:#ffe3e3;color:#c92a2a}.banner.na{background:#fff3bf;color:#8a6d00}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.ex{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word;background:#f8f9fa;padding:2px 6px;border-radius:4px;margin:3px 0}
.md{white-space:pre-wrap}
.tag{display:inline-block;padding:1px 6px;border-radius:10px;font-size:11px;background:#e7f5ff;color:#1864ab}
.agree{color:#2b8a3e}.disagree{color:#c92a2a}
svg{max-width:100%;height:auto}
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], raw_cols: Sequence[int] = ()) -> str:
    h = "".join(f"<th>{esc(x)}</th>" for x in headers)
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f"<td>{c if i in raw_cols else esc(c)}</td>" for i, c in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(report: dict) -> str:
    """One self-contained HTML page for ``report`` (no scripts, no external URLs)."""
    q = report["quality"]
    parts = [f"<h1>{esc(report['title'])}</h1>"]
    models = (report.get("run") or {}).get("models") or {}
    if models:
        parts.append('<p class="muted">' + " · ".join(f"<b>{esc(k)}</b> = {esc(v)}" for k, v in models.items() if v) + "</p>")
    # 1. quality gates first
    parts.append("<h2>Quality gates</h2>")
    if not q["available"]:
        parts.append('<div class="banner na">Benchmarks-only report: no crosscoder quality metrics.</div>')
    else:
        ok = bool(q["passed"])
        parts.append(f'<div class="banner {"ok" if ok else "low"}">{"All quality gates pass" if ok else "LOW CONFIDENCE: a quality gate failed"}</div>')
        rows = []
        for g in q["gates"]:
            cls, word = {True: ("pass", "pass"), False: ("fail", "FAIL"), None: ("muted", "missing")}[g["passed"]]
            v = g["value"]
            vs = fmt_num(v, 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else esc(v)
            rows.append([esc(g["model"]), esc(g["metric"]), vs, esc(f"{g['op']} {g['threshold']}"), f'<span class="{cls}">{word}</span>'])
        parts.append('<div class="card">' + _table(["model", "metric", "value", "gate", "result"], rows, raw_cols=range(5)) + "</div>")
        mrows = [[m, fmt_num(v.get("ev"), 3), fmt_num(v.get("l0"), 1), fmt_num(v.get("dead_fraction"), 3), fmt_num(v.get("delta_ce"), 3), fmt_num(v.get("kl"), 3)]
                 for m, v in q["models"].items()]
        parts.append('<div class="card">' + _table(["model", "EV", "L0", "dead", "spliced ΔCE", "KL"], mrows) + "</div>")
    # 2. overall
    o = report.get("overall")
    if o:
        parts.append("<h2>Overall</h2>")
        parts.append(f'<div class="card">Δscore (B − A) = <b>{esc(fmt_num(o["delta"], 1, True))} points</b> {esc(fmt_ci(o["ci_low"], o["ci_high"]))} '
                     f'over {esc(o["n"])} documents (A {esc(fmt_num(o["score_a"]))}, B {esc(fmt_num(o["score_b"]))}; p {esc(fmt_p(o.get("p_value")))}).</div>')
    # 3. categories
    cats = report["categories"]
    parts.append("<h2>Categories</h2>")
    gap_items = [{"label": c["name"], "value": (c.get("score_gap") or {}).get("delta"), "lo": (c.get("score_gap") or {}).get("ci_low"),
                  "hi": (c.get("score_gap") or {}).get("ci_high")} for c in cats if c.get("score_gap")]
    shift_items = [{"label": c["name"], "value": (c.get("latent_shift") or {}).get("share_ratio"), "lo": (c.get("latent_shift") or {}).get("ci_low"),
                    "hi": (c.get("latent_shift") or {}).get("ci_high"), "note": "insufficient" if (c.get("latent_shift") or {}).get("insufficient") else ""}
                   for c in cats if c.get("latent_shift")]
    charts = []
    if gap_items:
        charts.append(bar_chart_ci(gap_items, "Δscore per category (B − A, points, CI)", "points"))
    if shift_items:
        charts.append(bar_chart_ci(shift_items, "Latent share ratio per category (CI)", "share ratio − 1 (log scale)", log_ratio=True))
    if charts:
        parts.append('<div class="card">' + "".join(charts) + "</div>")
    rows = category_rows(report)
    for r, c in zip(rows, cats):
        a = c.get("agreement")
        r[-1] = f'<span class="{ {True: "agree", False: "disagree"}.get(a, "muted") }">{esc(agreement_label(a))}</span>'
        for i in range(len(r) - 1):
            r[i] = esc(r[i])
    parts.append('<div class="card">' + _table(CATEGORY_HEADERS, rows, raw_cols=range(len(CATEGORY_HEADERS))) + "</div>")
    # 4. tasks
    if report["tasks"]:
        parts.append("<h2>Tasks</h2>")
        items = [{"label": t["name"], "value": t.get("delta"), "lo": t.get("ci_low"), "hi": t.get("ci_high")} for t in report["tasks"]]
        parts.append('<div class="card">' + bar_chart_ci(items, "Δscore per task (B − A, points, CI)", "points") + "</div>")
        trows = [[t["name"], t.get("category"), t.get("metric"), t.get("n"), fmt_num(t.get("score_a")), fmt_num(t.get("score_b")),
                  fmt_num(t.get("delta"), 1, True), fmt_ci(t.get("ci_low"), t.get("ci_high")), fmt_p(t.get("p_value"))] for t in report["tasks"]]
        parts.append('<div class="card">' + _table(["task", "category", "metric", "n", "A", "B", "Δ (pts)", "CI", "p"], trows) + "</div>")
    # 5. latents
    ls = report.get("latent_summary") or {}
    if ls.get("delta_norm_hist") or ls.get("nu_points"):
        parts.append("<h2>Latents</h2>")
        parts.append('<div class="grid"><div class="card">' + histogram(ls.get("delta_norm_hist")) + '</div><div class="card">'
                     + scatter(ls.get("nu_points") or [], ls.get("nu_thresholds")) + "</div></div>")
    if report.get("selection_counts"):
        parts.append('<div class="card">' + _table(["selection stage", "count"], list(report["selection_counts"].items())) + "</div>")
    if report.get("organism"):
        org = report["organism"]
        planted = ", ".join(c["name"] for c in cats if c.get("planted"))
        parts.append("<h2>Model organism</h2>")
        parts.append(f'<div class="card">Planted: <b>{esc(planted)}</b>; top-ranked category: <b>{esc(org.get("top_category"))}</b>; '
                     f'recovered: <b>{esc(org.get("recovered"))}</b></div>')
    if report["latent_cards"]:
        parts.append("<h2>Latent cards</h2><div class=\"grid\">")
        for c in report["latent_cards"]:
            exs = "".join(f'<div class="ex"><b>{esc(fmt_num(e.get("act"), 2))}</b> {esc(e.get("text"))}</div>' for e in c["examples"])
            parts.append(f'<div class="card"><b>Latent {esc(c["latent"])}</b> <span class="tag">{esc(c.get("set") or "")}</span> '
                         f'<span class="tag">{esc(c.get("category") or "unassigned")}</span><br>'
                         f'<span class="muted">Δnorm {esc(fmt_num(c.get("delta_norm"), 3))} · ν^ε {esc(fmt_num(c.get("nu_eps"), 3))} · '
                         f'ν^r {esc(fmt_num(c.get("nu_r"), 3))}</span>{exs}</div>')
        parts.append("</div>")
    if report.get("controls"):
        parts.append("<h2>Controls</h2>")
        parts.append(f'<div class="card"><pre class="ex">{esc(json.dumps(report["controls"], indent=2, ensure_ascii=False, default=str))}</pre></div>')
    parts.append("<h2>Caveats</h2><ul>" + "".join(f"<li>{esc(c)}</li>" for c in report["caveats"]) + "</ul>")
    for s in report.get("sections") or []:
        parts.append(f"<h2>{esc(s['title'])}</h2><div class=\"card md\">{esc(s['markdown'])}</div>")
    parts.append(f'<p class="muted">{esc(report["schema"])} · lm_diff {esc(report["lm_diff_version"])} · {esc(report["generated_at"])}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(report['title'])}</title>"
            f"<style>{CSS}</style></head><body><main>" + "\n".join(parts) + "</main></body></html>\n")


def write_html_report(report: dict, out_dir: Path) -> Path:
    return write_text(Path(out_dir) / "report.html", to_html(report))
