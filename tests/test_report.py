"""report.py / report_html.py / report_cli.py: schema, gates, writers, escaping, diff reader, headless rendering."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from lm_diff.config import RunConfig
from lm_diff.errors import UserError
from lm_diff.plugins import manager as plugins
from lm_diff.report.build import SCHEMA, _composition_caveats, build_report, quality_section, seed_signs
from lm_diff.report.charts import category_chart
from lm_diff.report.export import neuronpedia_batches
from lm_diff.report.html import _script, script_hash
from lm_diff.report.markdown import _seed_cell
from lm_diff.report.terminal import print_summary
from lm_diff.report.writers import write_report
from lm_diff.run.outputs import find_outputs, read_diff_artifacts
from lm_diff.run.reporting import build_from_runs, report_from_runs

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
import make_fixtures as MF  # noqa: E402
from diff_fixture import diff_artifacts  # noqa: E402

BASE, FT = FIX / "lm_eval_runs" / "base", FIX / "lm_eval_runs" / "finetuned"


def _cfg():
    cfg = RunConfig()
    cfg.stats.bootstrap = 300
    cfg.stats.permutations = 300
    return cfg


@pytest.fixture(scope="module")
def diff_run(tmp_path_factory):
    return diff_artifacts(tmp_path_factory.mktemp("diffrun"))


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
    # the category change test, the latent headline (docs/method.md#category-change); one-sided: no upper end
    assert s["latent_change"] == {"ratio": 4.67, "ci_low": 2.1, "ci_high": None, "p": 0.0004, "q": 0.0014,
                                  "mds": 1.2, "n_specific": 6, "n_shared": 10, "insufficient": False}
    assert cats["instruction_following"]["latent_change"]["insufficient"] is True
    changed = rep["summary"]["changed"]
    assert "safety (+467 % [+210 %, unbounded] q 0.0014)" in changed and "code" not in changed
    # q 0.008 but an interval reaching below no change: not called changed
    assert "multilingual" not in changed
    assert "not in which direction" in changed
    md = (out / "report.md").read_text()
    assert "| latents changed, either way [CI] q |" in md and "| +467 % [+210 %, unbounded] q 0.0014 |" in md
    assert "| insufficient |" in md
    # a category whose latents changed leads with it; one that did not says how large a change was detectable
    finding = next(f for f in rep["summary"]["findings"] if f.startswith("B ") and "safety" in f)
    assert "its latents changed (6 model-specific vs 10 shared latents" in finding and "direction:" in finding
    code_f = next((f for f in rep["summary"]["findings"] if "code" in f.split(";")[0]), "")
    assert not code_f or "this run detects an enrichment of +90 % or more" in code_f
    assert changed.split(":")[0] in md and changed.split(":")[0] in (out / "report.html").read_text()
    assert s["agreement"] is True and cats["code"]["agreement"] is True and cats["math"]["agreement"] is None
    assert s["exposure"]["S"] > cats["code"]["exposure"]["S"]
    assert s["association"]["r"] > 0.5
    assert s["causal"]["fraction"] == pytest.approx(0.625)
    assert s["planted"] is None
    assert rep["quality"]["passed"] is True and rep["quality"]["low_confidence"] is False
    assert rep["selection_counts"]["B_delta"] == 14
    cards = rep["latent_cards"]
    assert cards and all(c["examples"] and c["no_examples"] is None and c["category"] for c in cards)
    assert {c["set"] for c in cards} == {"S", "T"}
    assert rep["summary"]["findings"] and rep["summary"]["quality"].startswith("Quality gates: all")
    assert {t["name"] for t in rep["tasks"]} == set(MF.TASKS)
    # the json on disk is the same dict (strict JSON: no NaN)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["schema"] == SCHEMA and len(on_disk["categories"]) == len(rep["categories"])


def test_markdown_order_plain_and_escaped(full):
    rep, out = full
    md = (out / "report.md").read_text()
    order = ["## Summary", "## Quality and controls", "## Categories", "## Tasks", "## Latents", "## Caveats"]
    assert [md.index(h) for h in order] == sorted(md.index(h) for h in order)
    assert rep["summary"]["findings"][0].replace("|", "\\|") in md
    assert not re.search(r"(?<!\\)<script", md) and "\\<script>alert(0)\\</script>" in md  # a Markdown escape
    assert "&lt;" not in md and "&gt;" not in md and "&amp;" not in md  # no HTML entities (">= 0.7" stays as is)
    assert ">= 0.7" in md and '"per_seed"' not in md  # raw controls stay in report.json


def test_html_self_contained_and_escaped(full):
    _, out = full
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 4  # category chart, task bars, histogram, scatter, activation histograms
    # one script, ours, allowed by its hash; dataset text is escaped
    assert html.lower().count("<script") == 1 and f"script-src '{script_hash(_script())}'" in html
    assert "&lt;script&gt;alert(0)&lt;/script&gt;" in html and "<script>alert" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html
    ids = ["summary", "verdicts", "categories", "tasks", "latents", "caveats", "controls"]
    assert [html.index(f'<section id="{i}"') for i in ids] == sorted(html.index(f'<section id="{i}"') for i in ids)
    assert html.index("<details><summary>controls as in report.json") > html.index('<section id="controls"')


def test_quality_gates_fail_low_confidence():
    q = {"models": {"A": {"ev": 0.5, "delta_ce": 0.1, "dead_fraction": 0.1}, "B": {"ev": 0.9, "delta_ce": 0.5, "dead_fraction": 0.1}}}
    s = quality_section(q, RunConfig().report.gates)
    failed = {(g["model"], g["metric"]) for g in s["gates"] if g["passed"] is False}
    assert failed == {("A", "ev"), ("B", "delta_ce")} and s["low_confidence"] is True
    s = quality_section({"models": {"A": {"ev": 0.9, "delta_ce": 0.1, "dead_fraction": 0.1}}}, None, {"identity": {"passed": False}})
    assert s["low_confidence"] is True
    assert quality_section(None)["low_confidence"] is None
    rep = build_report(config=_cfg(), quality=q, controls=None, linked=None, scores=None, latents=None, cards=None,
                       meta={}, sections=False)
    assert any("Low confidence" in c for c in rep["caveats"])


def test_organism_planted_and_recovered(diff_run):
    """The top-ranked category is the headline's (the change test's smallest q among enriched categories), and it is
    recovered when planted, whatever the planted direction."""
    for planted, recovered in (({"safety": "-"}, True), ({"code": "-"}, False)):
        (diff_run / "organism.json").write_text(json.dumps({"name": "demo", "planted": planted}))
        try:
            rep = build_from_runs(BASE, FT, diff_run, _cfg())
        finally:
            (diff_run / "organism.json").unlink()
        cats = {c["name"]: c for c in rep["categories"]}
        assert [n for n, c in cats.items() if c["planted"]] == list(planted)
        assert rep["organism"]["top_category"] == "safety" and rep["organism"]["recovered"] is recovered


def test_benchmarks_only_report(tmp_path):
    rep = report_from_runs(BASE, FT, out=tmp_path, config=_cfg(), quiet=True, formats=["json", "md"])
    assert rep["quality"]["available"] is False and rep["quality"]["low_confidence"] is None
    assert all(c["latent_shift"] is None for c in rep["categories"])
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.md").exists()
    assert any("Benchmarks-only" in c for c in rep["caveats"])


def test_diff_reader_layouts_and_errors(tmp_path, diff_run):
    stage = next((diff_run / "stages").glob("diff-*"))
    assert set(find_outputs(diff_run).values()) == {stage}  # no report stage: the newest finished stage per file
    assert set(find_outputs(stage).values()) == {stage}
    alt = tmp_path / "out"
    shutil.copytree(stage, alt / "diff")
    art = read_diff_artifacts(alt)
    assert art.latents is not None and {"delta_norm", "set", "nu_eps", "category"} <= set(art.latents.columns)
    assert art.quality["models"]["A"]["ev"] == 0.82
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no diff artifacts"):
        find_outputs(empty)
    # a table without one of its columns is refused, naming the file and the column (no aliases)
    sh = pd.read_parquet(alt / "diff" / "shift.parquet")
    sh.rename(columns={"p_value": "fisher_p"}).to_parquet(alt / "diff" / "shift.parquet")
    with pytest.raises(UserError, match=r"shift\.parquet.*lacks column\(s\) p_value"):
        read_diff_artifacts(alt)


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
        rep = build_report(config=_cfg(), quality=None, controls=None, linked=None, scores=None, latents=None, cards=None,
                           meta={"title": "t"})
        assert rep["sections"] == [{"title": "Extra <b>", "markdown": "hello <i>world</i>"}]
        paths = write_report(rep, tmp_path, ["json", "html", "txt"])
        assert paths["txt"].read_text() == SCHEMA
        html = paths["html"].read_text()
        assert "Extra &lt;b&gt;" in html and "<i>world" not in html
        with pytest.raises(UserError, match="no writer"):
            write_report(rep, tmp_path, ["pdf"])
    finally:
        plugins.reset_plugin_manager()


def test_terminal_summary_fits_80_columns(full):
    buf = StringIO()
    rep = json.loads(json.dumps(full[0]))
    rep["categories"][0]["name"] = "instruction_following"  # the longest built-in name, in full
    print_summary(rep, Console(file=buf, width=80))
    text = buf.getvalue()
    assert "quality gates: PASS" in text and "instruction_following" in text and "…" not in text
    assert text.index(rep["summary"]["findings"][0][:30]) < text.index("quality gates")  # the summary comes first
    assert max(len(line) for line in text.splitlines()) <= 80
    assert " changed " in text and "+467%*" in text  # the change test, compact: * at q <= 0.05


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
    rows = [{"seed": 0, "category": "safety", "share_ratio": 1.2}, {"seed": 1, "category": "safety", "share_ratio": float("inf")},
            {"seed": 2, "category": "safety", "share_ratio": 0.4}, {"seed": 0, "category": "code", "share_ratio": -0.6},
            {"seed": 1, "category": "code", "share_ratio": 0.1}, {"seed": 2, "category": "code", "share_ratio": None}]
    assert seed_signs(rows, "safety") == {"n": 3, "positive": 3, "negative": 0}
    assert seed_signs(rows, "code") == {"n": 3, "positive": 1, "negative": 1}  # a missing ratio counts in neither
    assert seed_signs(rows, "math") is None and seed_signs(rows[:1], "safety") is None  # no rows / one seed
    assert _seed_cell(seed_signs(rows, "safety")) == "3/3 +" and _seed_cell(seed_signs(rows, "code")) == "1+ 1− 1 n/a"
    assert _seed_cell(None) == "–"
    assert _seed_cell({"n": 3, "positive": 1, "negative": 0}) == "1+ 0− 2 n/a"  # two seeds without the category
    rep = build_report(linked=[{"name": "safety", "latent_shift": {"share_ratio": 1.2}}],
                       controls={"seeds": {"seeds": [0, 1, 2], "per_seed": rows}})
    assert rep["categories"][0]["seed_signs"] == {"n": 3, "positive": 3, "negative": 0}


def test_composition_caveat():
    cats = [{"name": "code", "latent_shift": {"n_S": 30, "n_T": 100, "N_S": 200, "N_T": 250}},
            {"name": "safety", "latent_shift": {"n_S": 40, "n_T": 20, "N_S": 200, "N_T": 250}},
            {"name": "unassigned", "latent_shift": {"n_S": 80, "n_T": 100, "N_S": 200, "N_T": 250}}]
    (cv,) = _composition_caveats(cats)
    # code: 15 % of S, 40 % of T -> others' shares moved by (1 - 0.15) / (1 - 0.40) - 1 = +42 %
    assert cv.startswith("code holds 15 % of the fine-tune-specific set S and 40 % of the comparison set T") and "+42 %" in cv
    assert _composition_caveats(cats[1:]) == []  # 20 % / 8 %: nothing dominates
    assert _composition_caveats([{"name": "code", "latent_shift": {"n_S": 3, "n_T": 9, "N_S": 10, "N_T": 9}}]) == []  # T is all code


def test_category_chart_is_honest():
    cats = [{"name": "a", "latent_shift": {"share_ratio": 2.0, "ci_low": 0.3, "ci_high": None, "q_value": 0.01, "n_S": 9, "n_T": 2}},
            {"name": "b", "latent_shift": {"share_ratio": 0.5, "ci_low": -0.2, "ci_high": 1.0, "q_value": 0.4, "n_S": 5, "n_T": 5}},
            {"name": "math", "latent_shift": {"share_ratio": -1.0, "ci_low": -1.0, "ci_high": -1.0, "q_value": 0.35,
                                              "n_S": 0, "n_T": 3, "insufficient": True},
             "score_gap": {"delta": 2.0, "ci_low": 0.0, "ci_high": 6.0}}]
    svg = category_chart(cats)
    rows = re.findall(r'<g class="row" data-category="(\w+)" data-insufficient="(\d)">(.*?)</g>(?=<g class="row"|</svg>)', svg, re.S)
    by = {n: (flag, body) for n, flag, body in rows}
    assert by["math"][0] == "1" and "bar ratio" not in by["math"][1] and "insufficient (0 vs 3 latents)" in by["math"][1]
    assert 'class="bar ratio"' in by["a"][1] and "stroke-dasharray" in by["a"][1]  # unbounded above: dashed to the edge
    assert "stroke-dasharray" not in by["b"][1]
    assert "#2b8a3e" in by["a"][1] and "#2b8a3e" not in by["b"][1] and "#c92a2a" not in by["b"][1]  # colour = significant
    assert "×0.5" in svg and "×2" in svg and "×10" in svg and "%" not in svg
    # with the change test, the panel is the headline: one colour for "changed" (it has no direction), the one-sided
    # interval dashed to the edge, the direction in the note
    cats[0]["latent_change"] = {"ratio": 3.0, "ci_low": 0.8, "ci_high": None, "q": 0.002, "n_specific": 20,
                                "n_shared": 90, "insufficient": False}
    cats[1]["latent_change"] = {"ratio": 0.4, "ci_low": -0.3, "ci_high": None, "q": 0.6, "n_specific": 8,
                                "n_shared": 70, "insufficient": False}
    cats[2]["latent_change"] = {"ratio": None, "q": None, "n_specific": 1, "n_shared": 2, "insufficient": True}
    svg = category_chart(cats)
    rows = re.findall(r'<g class="row" data-category="(\w+)" data-insufficient="(\d)">(.*?)</g>(?=<g class="row"|</svg>)', svg, re.S)
    by = {n: (flag, body) for n, flag, body in rows}
    assert "Latents changed, either way" in svg
    assert 'class="bar ratio change"' in by["a"][1] and "#5f3dc4" in by["a"][1] and "stroke-dasharray" in by["a"][1]
    assert "direction ×3" in by["a"][1]
    assert "#5f3dc4" not in by["b"][1] and "#2b8a3e" not in by["b"][1]
    assert by["math"][0] == "1" and "bar ratio" not in by["math"][1] and "insufficient (1 specific vs 2 shared" in by["math"][1]


def test_neuronpedia_export_well_formed(full):
    rep, out = full
    batches = neuronpedia_batches(rep)
    on_disk = {p.parent.name: json.loads(p.read_text()) for p in (out / "neuronpedia").glob("*/batch-0.json")}
    assert on_disk == json.loads(json.dumps(batches)) and on_disk
    for batch in on_disk.values():
        assert {"model_id", "layer", "sae_set", "features"} <= set(batch)
        assert [f["feature_index"] for f in batch["features"]] == [c["latent"] for c in rep["latent_cards"]]
        for f in batch["features"]:
            assert len(f["pos_str"]) == len(f["pos_values"]) and len(f["neg_str"]) == len(f["neg_values"])
            assert len(f["freq_hist_data_bar_heights"]) == len(f["freq_hist_data_bar_values"])
            assert 0 <= f["frac_nonzero"] <= 1 and f["activations"]
            for a in f["activations"]:
                assert len(a["tokens"]) == len(a["values"]) and 0 <= a["qualifying_token_index"] < len(a["tokens"])
                assert a["values"][a["qualifying_token_index"]] == max(a["values"])
