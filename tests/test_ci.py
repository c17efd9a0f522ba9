"""lm-diff ci: rule parsing, exit codes, Markdown job summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lm_diff.cli import main
from lm_diff.errors import UserError
from lm_diff.report.ci_rules import evaluate_rules, parse_rule
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
                        "latent_shift": {"share_ratio": -0.6, "q_linked": 0.02}}],
        "tasks": [{"name": "t1", "delta": 2.0}],
        "quality": {"available": True},
    }
    res = {r.rule.text: r for r in evaluate_rules(["safety<-2.0", "overall<0", "safety.ci_high<0", "safety.latent_shift<-0.5", "t1>1"], rep)}
    assert res["safety<-2.0"].failed and not res["overall<0"].failed
    assert res["safety.ci_high<0"].failed and res["safety.ci_high<0"].value is None  # unavailable -> fails
    assert res["safety.latent_shift<-0.5"].failed and res["t1>1"].failed
    assert evaluate_rules(["safety.q_linked<0.05"], rep)[0].failed
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
