"""join.py: loading lm-eval outputs (both layouts), pairing with doc_hash checks, paired score gaps."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lm_diff.bench.join import join_runs, load_run, score_gaps, sign_flip_pvalue
from lm_diff.config import StatsConfig
from lm_diff.errors import UserError
from lm_diff.stats import paired_bootstrap_diff

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
import make_fixtures as MF  # noqa: E402

BASE, FT = FIX / "lm_eval_runs" / "base", FIX / "lm_eval_runs" / "finetuned"
FAST = StatsConfig(bootstrap=400, permutations=400)


def test_load_run_lm_eval_tree_and_model_folder_and_file():
    r = load_run(BASE)
    assert r.tasks == list(MF.TASKS)
    assert len(r.samples) == sum(t[4] for t in MF.TASKS.values())
    assert r.metrics["diff_demo_math_gen"] == "exact_match" and r.metrics["diff_demo_code_mc"] == "acc"
    assert r.task_category("diff_demo_safety_refusal") == "safety"
    folder = next(BASE.iterdir())
    assert len(load_run(folder).samples) == len(r.samples)
    assert len(load_run(next(folder.glob("results_*.json"))).samples) == len(r.samples)
    row = r.samples[(r.samples.task == "diff_demo_safety_refusal") & (r.samples.doc_id == 0)].iloc[0]
    assert row.doc_hash == MF.doc_hash(row.doc) and row.prompt.startswith("Question:")


def test_load_run_own_layout(tmp_path):
    src = next(BASE.iterdir())
    res = json.loads(next(src.glob("results_*.json")).read_text())
    (tmp_path / "results.json").write_text(json.dumps(res))
    for f in src.glob("samples_*.jsonl"):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        shutil.copy(f, tmp_path / f"samples_{task}.jsonl")
    r = load_run(tmp_path)
    assert set(r.samples.task) == set(MF.TASKS)


def test_load_run_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_run(tmp_path / "nope")
    with pytest.raises(UserError, match="no results"):
        load_run(tmp_path)
    out = MF.write_lm_eval_run(tmp_path / "r", "base", tasks=["diff_demo_code_mc"])
    next(next(out.iterdir()).glob("samples_*.jsonl")).unlink()
    with pytest.raises(UserError, match="--log_samples"):
        load_run(out)
    MF.write_lm_eval_run(tmp_path / "two", "base")
    MF.write_lm_eval_run(tmp_path / "two", "finetuned")
    with pytest.raises(UserError, match="several models"):
        load_run(tmp_path / "two")


def test_join_pairs_rows():
    j = join_runs(BASE, FT)
    assert len(j) == sum(t[4] for t in MF.TASKS.values())
    assert not j.duplicated(["task", "doc_id", "filter"]).any()
    assert j.attrs["metrics"]["diff_demo_math_gen"] == "exact_match"
    assert j.attrs["task_categories"]["diff_demo_code_mc"] == "code"
    assert set(j["filter"]) == {"none", "strict-match"}


def test_join_mismatches_give_one_error(tmp_path):
    def mutate(rows, res):
        del rows["diff_demo_math_gen"]  # suite differs
        del res["configs"]["diff_demo_math_gen"]
        res["n-shot"]["diff_demo_code_mc"] = 5  # n-shot differs
        res["config"]["limit"] = 20  # limit differs
        rows["diff_demo_safety_refusal"][3]["doc_hash"] = "0" * 64  # document differs
        rows["diff_demo_multilingual_mc"].pop()  # documents differ

    ft = MF.write_lm_eval_run(tmp_path / "ft", "finetuned", mutate=mutate)
    with pytest.raises(UserError) as ei:
        join_runs(BASE, ft)
    msg = str(ei.value)
    for part in ("task suites differ", "diff_demo_math_gen", "n-shot differs", "--limit differs", "doc_hash differs",
                 "documents differ", "Fix:", "--num_fewshot"):
        assert part in msg, part
    assert msg.count("cannot pair") == 1


def test_join_chat_template_mismatch(tmp_path):
    ft = MF.write_lm_eval_run(tmp_path / "ft", "finetuned", mutate=lambda rows, res: res.update(chat_template_sha="abc"))
    with pytest.raises(UserError, match="apply_chat_template"):
        join_runs(BASE, ft)


def test_score_gaps_values():
    j = join_runs(BASE, FT)
    g = score_gaps(j, None, FAST)
    t = g.set_index("name")
    for task, (cat, *_rest) in MF.TASKS.items():
        sub = j[j.task == task]
        exp = 100 * (sub.score_b.mean() - sub.score_a.mean())
        assert t.loc[task, "delta"] == pytest.approx(exp)
        assert t.loc[task, "ci_low"] <= t.loc[task, "delta"] <= t.loc[task, "ci_high"]
        assert t.loc[cat, "delta"] == pytest.approx(exp)  # one task per category
    overall = 100 * (j.score_b.mean() - j.score_a.mean())
    assert t.loc["overall", "delta"] == pytest.approx(overall)
    assert t.loc["diff_demo_safety_refusal", "ci_low"] > 0 and t.loc["diff_demo_code_mc", "ci_high"] < 0
    assert t.loc["diff_demo_safety_refusal", "p_value"] < 0.01
    assert set(g.level) == {"task", "category", "overall"} and (g.unit == "points").all()
    # override mapping merges two tasks into one category, pooled by documents
    g2 = score_gaps(j, {"diff_demo_math_gen": "code"}, FAST).set_index("name")
    sub = j[j.task.isin(["diff_demo_math_gen", "diff_demo_code_mc"])]
    assert g2.loc["code", "delta"] == pytest.approx(100 * (sub.score_b.mean() - sub.score_a.mean()))
    assert g2.loc["code", "n"] == len(sub)


def test_score_gaps_lower_is_better_flips_sign():
    j = join_runs(BASE, FT)
    j.attrs["higher_is_better"] = {**j.attrs["higher_is_better"], "diff_demo_code_mc": False}
    g = score_gaps(j, None, FAST).set_index("name")
    assert g.loc["diff_demo_code_mc", "delta"] > 0


def test_task_ci_is_stats_paired_bootstrap_and_pooled_rows_stratify():
    j = join_runs(BASE, FT)
    g = score_gaps(j, None, FAST).set_index("name")
    sub = j[j.task == "diff_demo_code_mc"]
    est, lo, hi = paired_bootstrap_diff(100 * sub.score_a, 100 * sub.score_b, n_boot=FAST.bootstrap, seed=FAST.seed)
    assert (g.loc["diff_demo_code_mc", "ci_low"], g.loc["diff_demo_code_mc", "ci_high"]) == (lo, hi)
    assert g.loc["overall", "test"].startswith("paired") and g.loc["overall", "n"] == len(j)


def test_sign_flip():
    assert sign_flip_pvalue(np.zeros(10)) == 1.0
    assert sign_flip_pvalue(np.ones(20), n_perm=999) < 0.01
    assert sign_flip_pvalue(np.r_[np.ones(10), -np.ones(10)], n_perm=999) > 0.5
