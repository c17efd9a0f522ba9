"""Self-contained HTML report rendered from ``templates/report.html.j2`` (jinja2, autoescaping on): inline CSS, inline
SVG charts (:mod:`lm_diff.report.charts`), one inline script (the latent browser's search and filters) allowed by
its hash in the Content-Security-Policy, no external URL. Every dataset string is escaped by the template engine.

Order: summary → quality and controls → categories → tasks → latent browser → organism → caveats → raw controls
(collapsed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping

import jinja2
from markupsafe import Markup

from lm_diff.io import write_text
from lm_diff.link.table import as_float as _f
from lm_diff.report.charts import act_histogram, bar_chart_ci, category_chart, histogram, scatter
from lm_diff.report.markdown import (
    CATEGORY_HEADERS,
    TASK_HEADERS,
    category_rows,
    fmt_ci,
    fmt_num,
    fmt_p,
    resolution_note,
    task_rows,
)

__all__ = ["to_html", "write_html_report", "script_hash"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f8f9fa;color:#212529}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{border-bottom:1px solid #dee2e6;padding-bottom:4px;margin-top:32px}
.summary{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:16px 22px}
.summary h2{margin-top:12px}.lead{font-size:1.08em;font-weight:600}.findings li{margin:6px 0;line-height:1.45}
.unsupported{color:#8a6d00}
.card{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:14px 18px;margin:12px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
th,td{border-bottom:1px solid #e9ecef;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5;font-weight:600}
.pass{color:#2b8a3e;font-weight:600}.fail{color:#c92a2a;font-weight:700}.muted{color:#868e96}.small{font-size:12px}
.banner{padding:10px 14px;border-radius:8px;font-weight:600;margin:10px 0}
.banner.ok{background:#d3f9d8;color:#2b8a3e}.banner.low{background:#ffe3e3;color:#c92a2a}.banner.na{background:#fff3bf;color:#8a6d00}
.banner.plain{background:#e7f5ff;color:#1864ab;font-weight:500}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.filters{display:flex;flex-wrap:wrap;gap:14px;align-items:center;position:sticky;top:0;z-index:1}
.filters input[type=number]{width:5em}
article.latent header{margin-bottom:6px}
.cardgrid{display:grid;grid-template-columns:1fr 240px;gap:14px}
.ex{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word;background:#f8f9fa;padding:3px 6px;border-radius:4px;margin:3px 0}
.ex .k{color:#868e96;margin-right:8px}
.tok.h1{background:#fff4e6}.tok.h2{background:#ffe8cc}.tok.h3{background:#ffd8a8}.tok.h4{background:#ffc078}
.tok.h5{background:#ffa94d}.tok.h6{background:#ff922b}.tok.h7{background:#fd7e14;color:#fff}.tok.h8{background:#f76707;color:#fff}
.tok.h9{background:#e8590c;color:#fff}
.normbar{display:grid;grid-template-columns:1.5em 1fr 4em;gap:4px;align-items:center;font-size:12px}
.normbar .bar{display:block;height:9px;background:#1c7ed6;border-radius:2px}
.logits code{background:#f1f3f5;padding:0 3px;margin:1px;border-radius:3px;white-space:pre}
.md{white-space:pre-wrap}.raw{font-size:12px;white-space:pre-wrap;max-height:600px;overflow:auto}
.tag{display:inline-block;padding:1px 6px;border-radius:10px;font-size:11px;background:#e7f5ff;color:#1864ab}
.tag.set-S{background:#d3f9d8;color:#2b8a3e}.tag.set-T{background:#ffe3e3;color:#c92a2a}
svg{max-width:100%;height:auto}
"""

_SET_WORDS = {"S": "fine-tune-specific", "T": "comparison"}


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(lambda name: resources.files("lm_diff.report").joinpath("templates", name).read_text("utf-8"))
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def _script() -> str:
    return resources.files("lm_diff.report").joinpath("templates", "report.js").read_text("utf-8")


def script_hash(script: str) -> str:
    """The CSP source (``sha256-…``) that allows exactly ``script``."""
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def _level(a: float, top: float) -> int:
    """Shade 0-9 of activation ``a`` relative to the latent's maximum ``top``."""
    if a <= 0 or top <= 0:
        return 0
    return max(1, min(9, math.ceil(9 * a / top)))


def _example_view(e: Mapping, top: float) -> dict:
    kind = e.get("kind") or "top"
    label = f"{'top' if kind == 'top' else 'q' + str(e.get('quantile'))} {fmt_num(e.get('act'), 2)}"
    if e.get("tokens"):
        cells = [(t, _level(a, top), f"{a:.3g}" if a > 0 else "") for t, a in zip(e["tokens"], e["acts"])]
    else:  # a text-only example (older examples stage): the whole window at the example's level
        cells = [(e.get("text") or "", _level(_f(e.get("act")) or 0.0, top), fmt_num(e.get("act"), 3))]
    return {"label": label, "cells": cells}


def _card_view(c: Mapping) -> dict:
    ex = c.get("examples") or []
    top = max([_f(c.get("max_act")) or 0.0] + [a for e in ex for a in e.get("acts") or []] + [_f(e.get("act")) or 0.0 for e in ex])
    evidence = [{"auroc": None, "auroc_rest": None, **e} for e in c.get("categories") or [] if isinstance(e, Mapping)]
    if not evidence and c.get("category"):
        evidence = [{"category": c["category"], "auroc": None, "auroc_rest": None}]
    norms = {k: _f(v) for k, v in (c.get("decoder_norms") or {}).items() if _f(v) is not None}
    nmax = max(norms.values(), default=0.0) or 1.0
    d = _f(c.get("delta_norm"))
    spec = (d if c.get("set") == "S" else 1 - d) if d is not None else None
    texts = " ".join(e.get("text") or "" for e in ex)
    return {**c, "set_word": _SET_WORDS.get(c.get("set"), ""), "evidence": evidence,
            "cat_names": [e["category"] for e in evidence], "specificity": "" if spec is None else f"{spec:.4f}",
            "search": f"{c.get('latent')} {' '.join(e['category'] for e in evidence)} {texts}".lower(),
            "examples": [_example_view(e, top) for e in ex],
            "norm_bars": [(m, v, round(100 * v / nmax)) for m, v in norms.items()],
            "hist_svg": Markup(act_histogram(c.get("act_hist"))),
            "logits": [(m, lg) for m, lg in (c.get("logits") or {}).items() if lg]}


def to_html(report: dict) -> str:
    """One self-contained HTML page for ``report``."""
    cats = report["categories"]
    q = report["quality"]
    s = report.get("summary") or {}
    ls = report.get("latent_summary") or {}
    alpha = 1 - float((((report.get("run") or {}).get("config") or {}).get("stats") or {}).get("confidence", 0.95))
    tasks = [{"label": t["name"], "value": t.get("delta"), "lo": t.get("ci_low"), "hi": t.get("ci_high")} for t in report["tasks"]
             if not t.get("probe")]  # the chart is in points; the probes' nats/byte are in the table
    cards = [_card_view(c) for c in report.get("latent_cards") or []]
    script = _script()
    ctx = {
        "r": report, "s": s, "q": q, "models": [(k, v) for k, v in ((report.get("run") or {}).get("models") or {}).items() if v],
        "verdict_class": "na" if not q.get("available") else ("ok" if q.get("passed") else "low"),
        "category_chart": Markup(category_chart(cats, alpha)),
        "category_headers": CATEGORY_HEADERS, "category_rows": category_rows(report),
        "task_headers": TASK_HEADERS, "task_rows": task_rows(report), "resolution_note": resolution_note(report),
        "task_chart": Markup(bar_chart_ci(tasks, "Δscore per task (B − A, points, CI)", "points")) if tasks else "",
        "has_latents": bool(ls.get("delta_norm_hist") or ls.get("nu_points")),
        "delta_hist": Markup(histogram(ls.get("delta_norm_hist"))),
        "nu_scatter": Markup(scatter(ls.get("nu_points") or [], ls.get("nu_thresholds"))),
        "cards": cards, "card_categories": sorted({n for c in cards for n in c["cat_names"]}),
        "planted": ", ".join(c["name"] for c in cats if c.get("planted")),
        "controls_json": json.dumps(report.get("controls"), indent=2, ensure_ascii=False, default=str),
        "css": Markup(CSS), "script": Markup(script), "script_hash": script_hash(script),
        "num": lambda x, nd=1, signed=False: fmt_num(x, nd, signed) if not isinstance(x, (str, bool)) else x,
        "ci": fmt_ci, "p": fmt_p, "pct": lambda x: f"{100 * x:.2g} %",
    }
    return _env().get_template("report.html.j2").render(**ctx)


def write_html_report(report: dict, out_dir: Path) -> Path:
    return write_text(Path(out_dir) / "report.html", to_html(report))
