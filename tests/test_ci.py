"""lm-diff ci: rule parsing, exit codes, Markdown job summary."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lm_diff.bench.gaps import score_gaps
from lm_diff.bench.metric_kinds import MEAN, METRIC_KINDS
from lm_diff.cli import main
from lm_diff.config import RunConfig
from lm_diff.errors import UserError
from lm_diff.link.table import link_categories
from lm_diff.report.build import build_report
from lm_diff.report.ci_rules import evaluate_rules, parse_rule
from lm_diff.report.markdown import ci_summary_markdown
from lm_diff.run.reporting import ci

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
from diff_fixture import diff_artifacts  # noqa: E402

BASE, FT = str(FIX / "lm_eval_runs" / "base"), str(FIX / "lm_eval_runs" / "finetuned")


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    p.write_text("stats:\n  bootstrap: 300\n  permutations: 300\n")
    return str(p)


@pytest.fixture(scope="module")
def diff_run(tmp_path_factory):
    return diff_artifacts(tmp_path_factory.mktemp("diffrun"))


def test_parse_rules():
    r = parse_rule("safety<-2.0")
    assert (r.target, r.field, r.op, r.threshold) == ("safety", "delta", "<", -2.0)
    r = parse_rule(" code.ci_high < 0 ")
    assert (r.target, r.field, r.op, r.threshold) == ("code", "ci_high", "<", 0.0)
    assert parse_rule("safety.latent_shift<=-0.5").field == "latent_shift"
    assert parse_rule("overall>=1e-3").threshold == pytest.approx(0.001)
    for bad in ("safety", "safety<<2", "safety<abc", "<3", "safety=2"):
        with pytest.raises(UserError, match="TARGET"):
            parse_rule(bad)
    with pytest.raises(UserError, match="did you mean ci_high"):
        parse_rule("code.ci_hihg<0")


def test_evaluate_rules_on_report():
    rep = {
        "overall": {"delta": 5.0, "ci_low": 1.0, "ci_high": 9.0},
        "categories": [{"name": "safety", "score_gap": {"delta": -3.0, "ci_low": -5.0, "ci_high": None},
                        "latent_shift": {"share_ratio": -0.6, "q_linked": 0.02},
                        "latent_change": {"ratio": 1.4, "ci_low": 0.3, "ci_high": None, "q": 0.004}}],
        "tasks": [{"name": "t1", "delta": 2.0}],
        "quality": {"available": True},
    }
    res = {r.rule.text: r for r in evaluate_rules(["safety<-2.0", "overall<0", "safety.ci_high<0", "safety.latent_shift<-0.5", "t1>1"], rep)}
    assert res["safety<-2.0"].failed and not res["overall<0"].failed
    assert res["safety.ci_high<0"].failed and res["safety.ci_high<0"].value is None  # unavailable -> fails
    assert res["safety.latent_shift<-0.5"].failed and res["t1>1"].failed
    assert evaluate_rules(["safety.q_linked<0.05"], rep)[0].failed
    # the latent headline (docs/method.md#category-change): a gate on "nothing changed this category"
    got = evaluate_rules(["safety.change_q<0.05", "safety.latent_change>2", "safety.change_ci_low>0"], rep)
    assert [(r.failed, r.value) for r in got] == [(True, 0.004), (False, 1.4), (True, 0.3)]
    with pytest.raises(UserError, match="did you mean safety"):
        evaluate_rules(["safty<0"], rep)
    with pytest.raises(UserError, match="only score-gap fields"):
        evaluate_rules(["overall.latent_shift<0"], rep)


def test_ci_exit_codes_and_summary(tmp_path, cfg_file, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    s = tmp_path / "summary.md"
    assert ci(BASE, FT, rules=["overall<0", "safety<-2.0"], summary=s, config=cfg_file) == 0
    text = s.read_text()
    assert "✅ PASSED" in text and "safety<-2.0" in text and "| safety |" in text  # plain Markdown, no entities
    assert ci(BASE, FT, rules=["code<-2.0", "overall<0"], summary=s, out=tmp_path / "rep", config=cfg_file) == 1
    text = s.read_text()
    assert "❌ FAILED" in text and "1 of 2" in text and (tmp_path / "rep" / "report.html").exists()
    gh = tmp_path / "gh.md"
    gh.write_text("previous step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(gh))
    assert ci(BASE, FT, rules=["code.ci_high<0"], config=cfg_file) == 1
    assert gh.read_text().startswith("previous step\n## lm-diff regression check")


def test_ci_latent_rules_need_diff(tmp_path, cfg_file, diff_run):
    with pytest.raises(UserError, match="--diff"):
        ci(BASE, FT, rules=["safety.latent_shift<-0.5"], summary=tmp_path / "s.md", config=cfg_file)
    assert ci(BASE, FT, diff=diff_run, rules=["safety.latent_shift<-0.5", "code.latent_shift<-0.5"], summary=tmp_path / "s.md",
              config=cfg_file) == 1


def test_ci_cli(tmp_path, cfg_file, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    args = ["ci", "--base", BASE, "--finetuned", FT, "--config", cfg_file, "--summary", str(tmp_path / "s.md")]
    assert main(args + ["--fail-on", "overall<0"]) == 0
    assert main(args + ["--fail-on", "code<-5"]) == 1
    assert main(args + ["--fail-on", "code<<5"]) == 2
    assert "expected TARGET" in capsys.readouterr().err
    assert main(["report", "--base", BASE, "--finetuned", FT, "--out", str(tmp_path / "r"), "--config", cfg_file]) == 0
    assert (tmp_path / "r" / "report.html").exists()


def _report_with_perplexity_gaps() -> dict:
    """A report built the way ``lm-diff ci`` builds one: math's and code's accuracy tasks at ceiling for both models;
    B reads held-out math text better (+0.05 nats/byte) and held-out safety text worse (−0.08); code has no probe."""
    rng = np.random.default_rng(5)
    parts = [pd.DataFrame({"task": t, "doc_id": range(40), "metric": "acc", "score_a": 1.0, "score_b": 1.0,
                           "weight": 1.0}) for t in ("mc_math", "mc_code")]
    for task, shift in (("diff_probe_math", 0.05), ("diff_probe_safety", -0.08)):
        ll_a = rng.normal(-1.2, 0.1, 16)
        parts.append(pd.DataFrame({"task": task, "doc_id": range(16), "metric": "byte_perplexity", "score_a": ll_a,
                                   "score_b": ll_a + rng.normal(shift, 0.01, 16),
                                   "weight": rng.integers(200, 400, 16).astype(float)}))
    j = pd.concat(parts, ignore_index=True)
    probe = METRIC_KINDS["byte_perplexity"]
    j.attrs = {"kinds": {"mc_math": MEAN, "mc_code": MEAN, "diff_probe_math": probe, "diff_probe_safety": probe},
               "higher_is_better": {t: True for t in ("mc_math", "mc_code", "diff_probe_math", "diff_probe_safety")},
               "task_categories": {"mc_math": "math", "mc_code": "code", "diff_probe_math": "math",
                                   "diff_probe_safety": "safety"}}
    cfg = RunConfig()
    cfg.stats.bootstrap, cfg.stats.permutations = 300, 300
    gaps = score_gaps(j, None, cfg.stats)
    return build_report(config=cfg, linked=link_categories(None, gaps), scores=gaps, sections=False)


def test_perplexity_rules_read_the_categories_perplexity_gap():
    rep = _report_with_perplexity_gaps()
    cats = {c["name"]: c for c in rep["categories"]}
    math_pg, safety_pg = cats["math"]["perplexity_gap"], cats["safety"]["perplexity_gap"]
    assert math_pg["unit"] == "nats/byte" and math_pg["ci_low"] > 0 and safety_pg["ci_high"] < 0
    assert parse_rule("safety.perplexity<-0.05").field == "perplexity"
    rules = ["safety.perplexity<-0.05", "math.perplexity<-0.05", "safety.perplexity_ci_high<0",
             "math.perplexity_ci_low<0", "math<0", "code.perplexity<0", "diff_probe_safety<-0.05"]
    res = {r.rule.text: r for r in evaluate_rules(rules, rep)}
    # fails: B lost more than 0.05 nats/byte on safety text, significantly so; the stored gap is the value tested
    assert res["safety.perplexity<-0.05"].failed and res["safety.perplexity<-0.05"].value == pytest.approx(safety_pg["delta"])
    assert res["safety.perplexity_ci_high<0"].failed
    assert res["safety.perplexity_ci_high<0"].value == pytest.approx(safety_pg["ci_high"])
    # passes: math's text moved up, its accuracy did not move at all (the perplexity gap is not the score gap)
    assert not res["math.perplexity<-0.05"].failed and res["math.perplexity<-0.05"].value == pytest.approx(math_pg["delta"])
    assert not res["math.perplexity_ci_low<0"].failed and not res["math<0"].failed and res["math<0"].value == 0
    # a category no probe scored: unavailable, so the rule fails and says why
    code = res["code.perplexity<0"]
    assert code.failed and code.value is None and "no perplexity probe" in code.note
    assert res["diff_probe_safety<-0.05"].failed  # a probe task's own row
    with pytest.raises(UserError, match="only score-gap fields"):
        evaluate_rules(["overall.perplexity<0"], rep)
    with pytest.raises(UserError, match="did you mean perplexity"):
        parse_rule("safety.perplexty<0")
    md = ci_summary_markdown(rep, [res["safety.perplexity<-0.05"], res["math.perplexity<-0.05"]])
    assert "1 of 2" in md and f"{safety_pg['delta']:.4f}" in md
