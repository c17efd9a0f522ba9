"""report.py / report_html.py / report_cli.py: schema, gates, writers, escaping, diff reader, headless rendering."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lm_diff.config import RunConfig
from lm_diff.errors import UserError
from lm_diff.plugins import manager as plugins
from lm_diff.report.build import SCHEMA, build_report, quality_section, write_report
from lm_diff.report.from_runs import find_diff_stage, read_diff_artifacts, report_from_runs

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
import make_fixtures as MF  # noqa: E402

BASE, FT = FIX / "lm_eval_runs" / "base", FIX / "lm_eval_runs" / "finetuned"


def _cfg():
    cfg = RunConfig()
    cfg.stats.bootstrap = 300
    cfg.stats.permutations = 300
    return cfg


@pytest.fixture(scope="module")
def diff_run(tmp_path_factory):
    return MF.write_diff_artifacts(tmp_path_factory.mktemp("diffrun"))


@pytest.fixture(scope="module")
def full(tmp_path_factory, diff_run):
    out = tmp_path_factory.mktemp("report")
    rep = report_from_runs(BASE, FT, diff=diff_run, out=out, config=_cfg(), quiet=True)
    return rep, out


def test_schema_top_level(full):
    rep, out = full
    assert rep["schema"] == SCHEMA
    for k in ("quality", "controls", "categories", "tasks", "latent_cards", "selection_counts", "caveats", "overall", "run"):
        assert k in rep, k
    cats = {c["name"]: c for c in rep["categories"]}
    s = cats["safety"]
    for k in ("share_ratio", "count_ratio", "ci_low", "ci_high", "q_value", "n_S", "n_T", "insufficient"):
        assert k in s["latent_shift"], k
    assert set(s["score_gap"]) >= {"delta", "ci_low", "ci_high"}
    assert s["agreement"] is True and cats["code"]["agreement"] is True and cats["math"]["agreement"] is None
    assert s["exposure"]["S"] > cats["code"]["exposure"]["S"]
    assert s["association"]["r"] > 0.5
    assert s["causal"]["fraction"] == pytest.approx(0.625)
    assert s["planted"] is None
    assert rep["quality"]["passed"] is True and rep["quality"]["low_confidence"] is False
    assert rep["selection_counts"]["B_delta"] == 14
    assert rep["latent_cards"] and all(len(c["examples"]) <= 5 for c in rep["latent_cards"])
    assert {t["name"] for t in rep["tasks"]} == set(MF.TASKS)
    # the json on disk is the same dict (strict JSON: no NaN)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["schema"] == SCHEMA and len(on_disk["categories"]) == len(rep["categories"])


def test_markdown_gates_first(full):
    _, out = full
    md = (out / "report.md").read_text()
    assert md.index("## Quality gates") < md.index("## Categories") < md.index("## Tasks")
    assert "<script>" not in md


def test_html_self_contained_and_escaped(full):
    _, out = full
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 4  # category bars x2, task bars, histogram, scatter
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(0)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html
    assert html.index("Quality gates") < html.index("Categories")


def test_quality_gates_fail_low_confidence():
    q = {"models": {"A": {"ev": 0.5, "delta_ce": 0.1, "dead_fraction": 0.1}, "B": {"ev": 0.9, "delta_ce": 0.5, "dead_fraction": 0.1}}}
    s = quality_section(q, RunConfig().report.gates)
    failed = {(g["model"], g["metric"]) for g in s["gates"] if g["passed"] is False}
    assert failed == {("A", "ev"), ("B", "delta_ce")} and s["low_confidence"] is True
    s = quality_section({"models": {"A": {"ev": 0.9, "delta_ce": 0.1, "dead_fraction": 0.1}}}, None, {"identity": {"passed": False}})
    assert s["low_confidence"] is True
    assert quality_section(None)["low_confidence"] is None
    rep = build_report(config=_cfg(), quality=q, controls=None, category_table=None, score_table=None, task_table=None,
                       latents=None, cards=None, meta={}, sections=False)
    assert any("Low confidence" in c for c in rep["caveats"])


def test_organism_planted_and_recovered(diff_run):
    from lm_diff.report.from_runs import build_from_runs

    (diff_run / "organism.json").write_text(json.dumps({"name": "demo", "planted": {"code": "-"}}))
    try:
        rep = build_from_runs(BASE, FT, diff_run, _cfg())
    finally:
        (diff_run / "organism.json").unlink()
    cats = {c["name"]: c for c in rep["categories"]}
    assert cats["code"]["planted"] is True and cats["safety"]["planted"] is False
    assert rep["organism"]["top_category"] == "code" and rep["organism"]["recovered"] is True


def test_benchmarks_only_report(tmp_path):
    rep = report_from_runs(BASE, FT, out=tmp_path, config=_cfg(), quiet=True, formats=["json", "md"])
    assert rep["quality"]["available"] is False and rep["quality"]["low_confidence"] is None
    assert all(c["latent_shift"] is None for c in rep["categories"])
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.md").exists()
    assert any("Benchmarks-only" in c for c in rep["caveats"])


def test_diff_reader_layouts_and_errors(tmp_path, diff_run):
    stage = find_diff_stage(diff_run)
    assert stage.name.startswith("diff-")
    assert find_diff_stage(stage) == stage
    alt = tmp_path / "out"
    shutil.copytree(stage, alt / "diff")
    art = read_diff_artifacts(alt)
    assert art.latents is not None and {"delta_norm", "set", "nu_eps", "category"} <= set(art.latents.columns)
    assert art.quality["models"]["A"]["ev"] == 0.82
    with pytest.raises(UserError, match="no diff artifacts"):
        find_diff_stage(tmp_path)
    # code-orientation column only: converted to paper orientation
    import pandas as pd

    lat = pd.read_parquet(alt / "diff" / "latents.parquet")
    lat.assign(dec_norm_diff=1 - lat.delta_norm).drop(columns=["delta_norm"]).to_parquet(alt / "diff" / "latents.parquet")
    art2 = read_diff_artifacts(alt)
    assert art2.latents.delta_norm.to_numpy() == pytest.approx(lat.delta_norm.to_numpy())


def test_writers_hook_sections_and_unknown_format(tmp_path, monkeypatch):
    class Plugin:
        @plugins.hookspecs.hookimpl
        def lm_diff_report_sections(self, report):
            return [{"title": "Extra <b>", "markdown": "hello <i>world</i>"}]

        @plugins.hookspecs.hookimpl
        def lm_diff_report_writers(self):
            return {"txt": lambda report, out: (Path(out) / "r.txt").write_text(report["schema"]) and Path(out) / "r.txt"}

    plugins.reset_plugin_manager()
    pm = plugins.get_plugin_manager()
    pm.register(Plugin(), name="test_extra")
    try:
        rep = build_report(config=_cfg(), quality=None, controls=None, category_table=None, score_table=None, task_table=None,
                           latents=None, cards=None, meta={"title": "t"})
        assert rep["sections"] == [{"title": "Extra <b>", "markdown": "hello <i>world</i>"}]
        paths = write_report(rep, tmp_path, ["json", "html", "txt"])
        assert paths["txt"].read_text() == SCHEMA
        html = paths["html"].read_text()
        assert "Extra &lt;b&gt;" in html and "<i>world" not in html
        with pytest.raises(UserError, match="no writer"):
            write_report(rep, tmp_path, ["pdf"])
    finally:
        plugins.reset_plugin_manager()


def test_terminal_summary(full):
    from io import StringIO

    from rich.console import Console

    from lm_diff.report.build import print_summary

    buf = StringIO()
    print_summary(full[0], Console(file=buf, width=160))
    text = buf.getvalue()
    assert "quality gates: PASS" in text and "safety" in text


def test_html_renders_headless(full, tmp_path):
    """Render report.html in headless Chromium; the PNG must exist and be non-trivial."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("chromium is not installed (apt-get install -y chromium) - cannot render report.html headless")
    _, out = full
    png = tmp_path / "report.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
           "--window-size=1200,2000", (out / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.exists(), "chromium wrote no screenshot"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000


def test_seed_signs_counts_and_cell():
    from lm_diff.report.build import _seed_cell, seed_signs

    rows = [{"seed": 0, "category": "safety", "share_ratio": 1.2}, {"seed": 1, "category": "safety", "share_ratio": float("inf")},
            {"seed": 2, "category": "safety", "share_ratio": 0.4}, {"seed": 0, "category": "code", "share_ratio": -0.6},
            {"seed": 1, "category": "code", "share_ratio": 0.1}, {"seed": 2, "category": "code", "share_ratio": None}]
    assert seed_signs(rows, "safety") == {"n": 3, "positive": 3, "negative": 0}
    assert seed_signs(rows, "code") == {"n": 3, "positive": 1, "negative": 1}  # a missing ratio counts in neither
    assert seed_signs(rows, "math") is None and seed_signs(rows[:1], "safety") is None  # no rows / one seed
    assert _seed_cell(seed_signs(rows, "safety")) == "3/3 +" and _seed_cell(seed_signs(rows, "code")) == "1+ 1− 1 n/a"
    assert _seed_cell(None) == "–"
    assert _seed_cell({"n": 3, "positive": 1, "negative": 0}) == "1+ 0− 2 n/a"  # two seeds without the category
    rep = build_report(category_table=[{"name": "safety", "latent_shift": {"share_ratio": 1.2}}],
                       controls={"seeds": {"seeds": [0, 1, 2], "per_seed": rows}})
    assert rep["categories"][0]["seed_signs"] == {"n": 3, "positive": 3, "negative": 0}


def test_composition_caveat():
    from lm_diff.report.build import _composition_caveats

    cats = [{"name": "code", "latent_shift": {"n_S": 30, "n_T": 100, "N_S": 200, "N_T": 250}},
            {"name": "safety", "latent_shift": {"n_S": 40, "n_T": 20, "N_S": 200, "N_T": 250}},
            {"name": "unassigned", "latent_shift": {"n_S": 80, "n_T": 100, "N_S": 200, "N_T": 250}}]
    (cv,) = _composition_caveats(cats)
    # code: 15 % of S, 40 % of T -> others' shares moved by (1 - 0.15) / (1 - 0.40) - 1 = +42 %
    assert cv.startswith("code holds 15 % of the fine-tune-specific set S and 40 % of the comparison set T") and "+42 %" in cv
    assert _composition_caveats(cats[1:]) == []  # 20 % / 8 %: nothing dominates
    assert _composition_caveats([{"name": "code", "latent_shift": {"n_S": 3, "n_T": 9, "N_S": 10, "N_T": 9}}]) == []  # T is all code


def test_linked_q_is_bh_over_the_categories_whose_score_moved():
    """q_linked: BH over the categories with a significant score gap only; agreement uses it, q_value stays BH over all."""
    gap_up = {"delta": 50.0, "ci_low": 40.0, "ci_high": 60.0}
    shifts = [  # name, share ratio, p, q over all categories, score gap
        ("safety", 1.2, 0.01, 0.06, gap_up),
        ("multilingual", 0.9, 0.04, 0.09, gap_up),
        ("math", 2.0, 0.001, 0.011, {"delta": 1.0, "ci_low": -2.0, "ci_high": 4.0}),  # score did not move
        ("code", -0.5, 0.30, 0.40, {"delta": -50.0, "ci_low": -60.0, "ci_high": -40.0}),
    ]
    cats = [{"name": n, "latent_shift": {"share_ratio": sr, "p_value": p, "q_value": q, "insufficient": False}} for n, sr, p, q, _ in shifts]
    gaps = [{"name": n, "level": "category", **g} for n, *_, g in shifts]
    rep = build_report(category_table=cats, score_table=gaps, config=_cfg())
    by = {c["name"]: c for c in rep["categories"]}
    # family {safety, multilingual, code}: p (0.01, 0.04, 0.30) -> BH (0.03, 0.06, 0.30)
    assert by["safety"]["latent_shift"]["q_linked"] == pytest.approx(0.03)
    assert by["multilingual"]["latent_shift"]["q_linked"] == pytest.approx(0.06)
    assert by["code"]["latent_shift"]["q_linked"] == pytest.approx(0.30)
    assert "q_linked" not in by["math"]["latent_shift"]
    assert by["safety"]["agreement"] is True  # q_value 0.06 alone would not pass
    assert by["multilingual"]["agreement"] is None and by["code"]["agreement"] is None and by["math"]["agreement"] is None
    assert by["safety"]["latent_shift"]["q_value"] == 0.06


def test_share_ratio_chart_draws_unbounded_ci_dashed():
    from lm_diff.report.html import bar_chart_ci

    svg = bar_chart_ci([{"label": "a", "value": 2.0, "lo": 0.3, "hi": None}, {"label": "b", "value": 0.5, "lo": -0.2, "hi": 1.0}],
                       "t", log_ratio=True)
    assert svg.count("stroke-dasharray") == 1 and "a: CI unbounded above" in svg
    assert "stroke-dasharray" not in bar_chart_ci([{"label": "a", "value": 2.0, "lo": 0.3, "hi": None}], "t")  # not a ratio chart
