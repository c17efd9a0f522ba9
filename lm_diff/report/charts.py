"""Inline SVG charts of the HTML report (no scripts, no external assets; every label escaped).

- :func:`category_chart`: per category, the benchmark gap and the latent share ratio side by side on one row, so
  agreement shows at a glance. Colour only for a significant gap (CI excludes 0) or shift (q ≤ alpha); a category with
  too few latents gets a marker and the word "insufficient", never a bar; a CI unbounded above is dashed to the edge
  with an arrow; the ratio axis is labelled as factors (×0.5, ×2, ×10).
- :func:`bar_chart_ci` (Δscore per task), :func:`histogram` (Δnorm), :func:`scatter` (ν^ε vs ν^r),
  :func:`act_histogram` (one latent's activations).
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional, Sequence

from lm_diff.link.table import as_float as _f
from lm_diff.report.markdown import fmt_num, fmt_p
from lm_diff.report.summary import significant_change, significant_gap, significant_shift

POS, NEG, NEUTRAL, GREY = "#2b8a3e", "#c92a2a", "#1c7ed6", "#adb5bd"
CHANGED = "#5f3dc4"  # the latent headline has no direction: one colour for "changed", never green or red
_RATIO_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)


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




def _factor(r: float) -> str:
    return f"×{r:g}"


def bar_chart_ci(items: list[dict], title: str, unit: str = "", width: int = 900) -> str:
    """Horizontal bars from 0 with CI whiskers; coloured only when the CI excludes 0. items: {label, value, lo, hi}."""
    items = [dict(i, _v=_f(i.get("value")), _lo=_f(i.get("lo")), _hi=_f(i.get("hi"))) for i in items]
    items = [i for i in items if i["_v"] is not None]
    if not items:
        return f'<p class="muted">{esc(title)}: nothing to plot.</p>'
    longest = max(len(str(i["label"])) for i in items)
    label_w, row_h, top, bottom = min(380, max(120, 7 * longest + 16)), 24, 30, 34
    h = top + row_h * len(items) + bottom
    lo, hi = _nice_range([x for i in items for x in (i["_v"], i["_lo"], i["_hi"]) if x is not None])
    x0, x1 = label_w, width - 20

    def X(v):
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    b = [f'<text x="{x0}" y="18" font-weight="600">{esc(title)}</text>']
    for t in _ticks(lo, hi):
        b.append(f'<line x1="{X(t):.1f}" y1="{top - 4}" x2="{X(t):.1f}" y2="{h - bottom + 4}" stroke="#e9ecef"/>')
        b.append(f'<text x="{X(t):.1f}" y="{h - bottom + 18}" text-anchor="middle" fill="#495057">{t:+g}</text>')
    b.append(f'<line x1="{X(0):.1f}" y1="{top - 6}" x2="{X(0):.1f}" y2="{h - bottom + 6}" stroke="#343a40"/>')
    for k, i in enumerate(items):
        y = top + k * row_h
        sig = significant_gap({"delta": i["_v"], "ci_low": i["_lo"], "ci_high": i["_hi"]})
        color = (POS if sig > 0 else NEG) if sig else GREY
        xa, xb = sorted((X(0), X(i["_v"])))
        b.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{esc(i["label"])}</text>')
        b.append(f'<rect class="bar" x="{xa:.1f}" y="{y + 5}" width="{max(xb - xa, 1):.1f}" height="{row_h - 10}" fill="{color}">'
                 f'<title>{esc(i["label"])}: {fmt_num(i["_v"], 1, True)}</title></rect>')
        if i["_lo"] is not None and i["_hi"] is not None:
            b.append(_whisker(X(i["_lo"]), X(i["_hi"]), y + row_h / 2))
    if unit:
        b.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{h - 2}" text-anchor="middle" fill="#495057">{esc(unit)}</text>')
    return _svg(width, h, b, title)


def _whisker(xa: float, xb: float, y: float, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    out = f'<line x1="{xa:.1f}" y1="{y:.1f}" x2="{xb:.1f}" y2="{y:.1f}" stroke="#212529" stroke-width="1.5"{dash}/>'
    out += f'<line x1="{xa:.1f}" y1="{y - 5:.1f}" x2="{xa:.1f}" y2="{y + 5:.1f}" stroke="#212529" stroke-width="1.5"/>'
    if dashed:
        return out + f'<path d="M{xb - 7:.1f},{y - 4:.1f} L{xb:.1f},{y:.1f} L{xb - 7:.1f},{y + 4:.1f}" fill="none" stroke="#212529" stroke-width="1.5"/>'
    return out + f'<line x1="{xb:.1f}" y1="{y - 5:.1f}" x2="{xb:.1f}" y2="{y + 5:.1f}" stroke="#212529" stroke-width="1.5"/>'


def category_chart(categories: Sequence[dict], alpha: float = 0.05, width: int = 1040) -> str:
    """Benchmark Δscore (left, points) and, right, the latent headline per category: how much more of the category the
    model-specific latents (S ∪ T) carry than the shared ones (factor on a log axis, one-sided interval; coloured when
    the category changed, docs/method.md#category-change). A report without the change test plots the S-vs-T share
    ratio there instead; the note beside each row gives the counts, q and the direction (S-vs-T share ratio)."""
    rows = [c for c in categories if c.get("score_gap") or c.get("latent_shift")]
    if not rows:
        return '<p class="muted">No category has a benchmark gap or a latent shift.</p>'
    label_w, gap_w, row_h, top, bottom = 190, 330, 26, 44, 40
    r0, r1 = label_w + gap_w + 40, width - 150  # ratio panel; the right margin holds the notes
    g0, g1 = label_w, label_w + gap_w
    h = top + row_h * len(rows) + bottom
    gaps = [x for c in rows for x in (_f((c.get("score_gap") or {}).get(k)) for k in ("delta", "ci_low", "ci_high")) if x is not None]
    glo, ghi = _nice_range(gaps or [0.0])
    llo, lhi = math.log(_RATIO_TICKS[0]), math.log(_RATIO_TICKS[-1])

    def GX(v):
        return g0 + (v - glo) / (ghi - glo) * (g1 - g0)

    def RX(ratio):  # ratio = R (share ratio + 1), clipped to the axis
        return r0 + (min(max(math.log(max(ratio, 1e-9)), llo), lhi) - llo) / (lhi - llo) * (r1 - r0)

    headline = any(c.get("latent_change") for c in rows)
    title, sub = (("Latents changed, either way (model-specific vs shared, factor)",
                   "×2 = twice the share among A- and B-specific latents as among shared ones") if headline else
                  ("Latent share ratio (S vs T, factor)", "×2 = twice the share among fine-tune-specific latents"))
    b = [f'<text x="{g0}" y="16" font-weight="600">Benchmark Δscore (B − A, points)</text>',
         f'<text x="{r0}" y="16" font-weight="600">{title}</text>',
         f'<text x="{r0}" y="32" fill="#495057" font-size="11">{sub}</text>']
    for t in _ticks(glo, ghi):
        b.append(f'<line x1="{GX(t):.1f}" y1="{top - 4}" x2="{GX(t):.1f}" y2="{h - bottom + 4}" stroke="#e9ecef"/>')
        b.append(f'<text x="{GX(t):.1f}" y="{h - bottom + 18}" text-anchor="middle" fill="#495057">{t:+g}</text>')
    for t in _RATIO_TICKS:
        b.append(f'<line x1="{RX(t):.1f}" y1="{top - 4}" x2="{RX(t):.1f}" y2="{h - bottom + 4}" stroke="#e9ecef"/>')
        b.append(f'<text x="{RX(t):.1f}" y="{h - bottom + 18}" text-anchor="middle" fill="#495057">{_factor(t)}</text>')
    b.append(f'<line x1="{GX(0):.1f}" y1="{top - 6}" x2="{GX(0):.1f}" y2="{h - bottom + 6}" stroke="#343a40"/>')
    b.append(f'<line x1="{RX(1):.1f}" y1="{top - 6}" x2="{RX(1):.1f}" y2="{h - bottom + 6}" stroke="#343a40"/>')
    for k, c in enumerate(rows):
        y = top + k * row_h
        ym = y + row_h / 2
        gap, ls, lc = c.get("score_gap") or {}, c.get("latent_shift") or {}, c.get("latent_change") or {}
        insufficient = bool((lc if headline else ls).get("insufficient"))
        b.append(f'<g class="row" data-category="{esc(c["name"])}" data-insufficient="{int(insufficient)}">')
        if k % 2:
            b.append(f'<rect x="0" y="{y}" width="{width}" height="{row_h}" fill="#f8f9fa"/>')
        b.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{esc(c["name"])}</text>')
        d = _f(gap.get("delta"))
        if d is not None:
            sig = significant_gap(gap)
            color = (POS if sig > 0 else NEG) if sig else GREY
            xa, xb = sorted((GX(0), GX(d)))
            b.append(f'<rect class="bar gap" x="{xa:.1f}" y="{y + 6}" width="{max(xb - xa, 1):.1f}" height="{row_h - 12}" fill="{color}">'
                     f'<title>{esc(c["name"])}: Δscore {fmt_num(d, 1, True)} points</title></rect>')
            lo, hi = _f(gap.get("ci_low")), _f(gap.get("ci_high"))
            if lo is not None and hi is not None and lo != hi:
                b.append(_whisker(GX(lo), GX(hi), ym))
        else:
            b.append(f'<text x="{GX(0) + 6:.1f}" y="{y + 17}" fill="#868e96" font-size="11">no benchmark task</text>')
        b.append(_change_cell(c["name"], lc, ls, insufficient, alpha, RX, r1, y, row_h) if headline
                 else _ratio_cell(c["name"], ls, insufficient, alpha, RX, r1, y, row_h))
        b.append("</g>")
    return _svg(width, h, b, "Benchmark gap and latent change per category" if headline
                else "Benchmark gap and latent share ratio per category")


def _no_latents(RX, y: float) -> str:
    return f'<text x="{RX(1) + 6:.1f}" y="{y + 17}" fill="#868e96" font-size="11">no latents</text>'


def _insufficient(name: str, n: str, what: str, RX, y: float, ym: float) -> str:
    """The hollow diamond at no change and "insufficient (counts)" of a category with too few latents to ``what``."""
    x = RX(1)
    return (f'<g class="marker insufficient"><path d="M{x:.1f},{ym - 6:.1f} L{x + 6:.1f},{ym:.1f} L{x:.1f},{ym + 6:.1f} '
            f'L{x - 6:.1f},{ym:.1f} Z" fill="#fff" stroke="#495057" stroke-width="1.5"/>'
            f'<text x="{x + 12:.1f}" y="{y + 17}" fill="#495057">insufficient ({n})</text>'
            f'<title>{esc(name)}: too few latents to {what} ({n})</title></g>')


def _change_cell(name: str, lc: dict, ls: dict, insufficient: bool, alpha: float, RX, r1: float, y: float,
                 row_h: int) -> str:
    """The headline's bar: enrichment factor R (ratio + 1) of the model-specific latents against the shared ones, a
    dashed whisker from its one-sided interval's lower end to the edge, coloured only when the category changed."""
    ym = y + row_h / 2
    if not lc:
        return _no_latents(RX, y)
    n = f'{int(_f(lc.get("n_specific")) or 0)} specific vs {int(_f(lc.get("n_shared")) or 0)} shared latents'
    if insufficient:
        return _insufficient(name, n, "test a change", RX, y, ym)
    r = _f(lc.get("ratio"))
    changed = significant_change(lc, alpha)
    d = _f(ls.get("share_ratio")) if ls and not ls.get("insufficient") else None
    direction = "" if d is None else f"; direction ×{d + 1:.2g}"
    note = (f'<text x="{r1 + 8:.1f}" y="{y + 17}" fill="#495057" font-size="11">q {esc(fmt_p(lc.get("q")))}{direction}'
            f'<title>{esc(name)}: {esc(n)}</title></text>')
    if r is None:
        return note
    R = r + 1
    xa, xb = sorted((RX(1), RX(R)))
    out = (f'<rect class="bar ratio change" x="{xa:.1f}" y="{y + 6}" width="{max(xb - xa, 1):.1f}" height="{row_h - 12}" '
           f'fill="{CHANGED if changed else GREY}"><title>{esc(name)}: ×{R:.2f} ({esc(n)})</title></rect>')
    lo = _f(lc.get("ci_low"))
    if lo is not None:
        out += _whisker(RX(lo + 1), r1, ym, dashed=True)
    return out + note


def _ratio_cell(name: str, ls: dict, insufficient: bool, alpha: float, RX, r1: float, y: float, row_h: int) -> str:
    ym = y + row_h / 2
    if not ls:
        return _no_latents(RX, y)
    n = f'{int(_f(ls.get("n_S")) or 0)} vs {int(_f(ls.get("n_T")) or 0)} latents'
    if insufficient:
        return _insufficient(name, n, "estimate a share ratio", RX, y, ym)
    r = _f(ls.get("share_ratio"))
    sig = significant_shift(ls, alpha)
    color = (POS if sig > 0 else NEG) if sig else GREY
    note = f'<text x="{r1 + 8:.1f}" y="{y + 17}" fill="#495057" font-size="11">{esc(n)}, q {fmt_num(ls.get("q_value"), 2)}</text>'
    if r is None:  # latents of the category on one side only
        side = "S" if (_f(ls.get("n_S")) or 0) > (_f(ls.get("n_T")) or 0) else "T"
        x = r1 if side == "S" else RX(_RATIO_TICKS[0])
        return (f'<text class="onlyside" x="{x:.1f}" y="{y + 17}" text-anchor="{"end" if side == "S" else "start"}" fill="{color}">'
                f'only in {side}</text>{note}')
    R = r + 1
    xa, xb = sorted((RX(1), RX(R)))
    out = (f'<rect class="bar ratio" x="{xa:.1f}" y="{y + 6}" width="{max(xb - xa, 1):.1f}" height="{row_h - 12}" fill="{color}">'
           f'<title>{esc(name)}: share ratio ×{R:.2f}</title></rect>')
    lo, hi = _f(ls.get("ci_low")), _f(ls.get("ci_high"))
    if lo is not None:
        if hi is None:
            out += _whisker(RX(lo + 1), r1, ym, dashed=True)
        else:
            out += _whisker(RX(lo + 1), RX(hi + 1), ym)
    return out + note


def act_histogram(hist: Optional[dict], width: int = 220, height: int = 70) -> str:
    """A latent's nonzero-activation histogram (sampled), linear counts."""
    if not hist or not hist.get("counts") or not sum(hist["counts"]):
        return '<span class="muted">no activations</span>'
    counts, edges = hist["counts"], hist["edges"]
    n, cmax = len(counts), max(counts)
    bw = (width - 10) / n
    b = []
    for k, c in enumerate(counts):
        bh = (height - 18) * c / cmax
        b.append(f'<rect x="{5 + k * bw:.1f}" y="{height - 14 - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" fill="{NEUTRAL}">'
                 f'<title>[{edges[k]:.3g}, {edges[k + 1]:.3g}): {c}</title></rect>')
    b.append(f'<text x="5" y="{height - 2}" font-size="10" fill="#495057">0</text>')
    b.append(f'<text x="{width - 5}" y="{height - 2}" font-size="10" text-anchor="end" fill="#495057">{edges[-1]:.3g}</text>')
    return _svg(width, height, b, "activation histogram")
