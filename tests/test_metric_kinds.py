"""metric_kinds + join: every lm-eval metric kind read per item reproduces lm-eval's own aggregate (lm_eval.api.metrics),
and perplexity tasks are compared as log-likelihood per word (a falling perplexity is a gain)."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from lm_eval.api import metrics as LM

from lm_diff.bench.join import join_runs, load_run, score_gaps
from lm_diff.bench.metric_kinds import METRIC_KINDS, lm_eval_score, metric_kind, read_values
from lm_diff.config import StatsConfig
from lm_diff.errors import UserError

FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIX))
import make_fixtures as MF  # noqa: E402

FAST = StatsConfig(bootstrap=400, permutations=400)
RNG = random.Random(7)


def _roundtrip(values: list) -> list:
    """What lm-eval's samples JSONL gives back (tuples become lists)."""
    return json.loads(json.dumps(values))


def _ours(metric: str, logged: list) -> float:
    kind = metric_kind("t", metric)
    if not kind.paired:
        return lm_eval_score(kind, logged=logged)
    v, w = read_values(kind, "t", metric, logged)
    return lm_eval_score(kind, v, w)


def _lls(n: int) -> list[tuple[float, int]]:
    return [(-RNG.uniform(5, 80), RNG.randint(3, 40)) for _ in range(n)]


@pytest.mark.parametrize("metric", ["acc", "acc_norm", "exact_match", "pass@1", "prompt_level_strict_acc"])
def test_mean_kinds(metric):
    items = [float(RNG.random() < 0.6) for _ in range(50)]
    assert _ours(metric, _roundtrip(items)) == pytest.approx(LM.mean(items), abs=1e-12)


@pytest.mark.parametrize("metric,agg", [("word_perplexity", LM.weighted_perplexity),
                                        ("byte_perplexity", LM.weighted_perplexity),
                                        ("bits_per_byte", LM.bits_per_byte)])
def test_rolling_loglikelihood_kinds(metric, agg):
    items = _lls(40)
    assert _ours(metric, _roundtrip(items)) == pytest.approx(agg(items), rel=1e-12)


def test_loglikelihood_perplexity():
    lls = [-RNG.uniform(0.1, 6) for _ in range(30)]
    assert _ours("perplexity", lls) == pytest.approx(LM.perplexity(lls), rel=1e-12)
    assert METRIC_KINDS["perplexity"].higher_is_better  # the compared log-likelihood rises as perplexity falls


def test_ifeval_instruction_lists():
    items = [[RNG.random() < 0.7 for _ in range(RNG.randint(1, 4))] for _ in range(25)]
    flat = [x for sub in items for x in sub]  # lm-eval's ifeval utils.agg_inst_level_acc: flattened mean
    assert _ours("inst_level_strict_acc", _roundtrip(items)) == pytest.approx(sum(flat) / len(flat), abs=1e-12)


def test_brier_score():
    items = []
    for _ in range(20):
        p = np.asarray([RNG.random() for _ in range(4)])
        items.append((RNG.randint(0, 3), list(p / p.sum())))
    assert _ours("brier_score", _roundtrip(items)) == pytest.approx(LM.brier_score(items), abs=1e-12)
    assert not METRIC_KINDS["brier_score"].higher_is_better


@pytest.mark.parametrize("metric,agg", [("f1", LM.f1_score), ("mcc", LM.matthews_corrcoef)])
def test_corpus_classification(metric, agg):
    items = [(RNG.randint(0, 1), RNG.randint(0, 1)) for _ in range(40)]
    assert _ours(metric, _roundtrip(items)) == pytest.approx(agg(items))
    assert not metric_kind("t", metric).paired


@pytest.mark.parametrize("metric,agg", [("bleu", LM.bleu), ("chrf", LM.chrf), ("ter", LM.ter)])
def test_corpus_translation(metric, agg):
    words = "the a cat dog sat on mat house red blue".split()
    items = [([" ".join(RNG.choices(words, k=6))], " ".join(RNG.choices(words, k=6))) for _ in range(15)]
    assert _ours(metric, _roundtrip(items)) == pytest.approx(agg(items))


def test_unknown_metrics_are_refused_by_name_custom_means_accepted():
    with pytest.raises(UserError, match="'rouge2_weird'"):
        metric_kind("some_task", "rouge2_weird", {"metric_list": [{"metric": "rouge2_weird", "aggregation": "median"}]}, 0.3)
    with pytest.raises(UserError, match="'likelihood'"):
        metric_kind("some_task", "likelihood")
    custom = metric_kind("t", "my_score", {"metric_list": [{"metric": "my_score", "aggregation": "mean"}]}, 0.5)
    assert custom.paired and "my_score" in custom.quantity
    with pytest.raises(UserError, match="value 1 cannot be read"):
        read_values(METRIC_KINDS["word_perplexity"], "t", "word_perplexity", [[-3.0, 2], "oops"])


# ----------------------------------------------------------------------------------------------------------------------
# End to end through join_runs/score_gaps: the perplexity example of issue #17

PPL = {"base": {"diff_demo_math_gen": 4.79, "diff_demo_multilingual_mc": 6.10},
       "finetuned": {"diff_demo_math_gen": 3.35, "diff_demo_multilingual_mc": 7.25}}


def _perplexity_run(out: Path, model: str) -> Path:
    def mutate(rows, res):
        for task, target in PPL[model].items():
            r = random.Random(f"{task}-{model}")
            words = [random.Random(f"{task}-{i}").randint(5, 30) for i in range(len(rows[task]))]  # same docs: same counts
            raw = [-math.log(target) * w * (1 + 0.3 * (r.random() - 0.5)) for w in words]
            k = -math.log(target) * sum(words) / sum(raw)
            items = [(ll * k, w) for ll, w in zip(raw, words)]
            for row, item in zip(rows[task], items):
                for old in ("acc", "exact_match"):
                    row.pop(old, None)
                row["metrics"] = ["word_perplexity", "byte_perplexity", "bits_per_byte"]
                row["word_perplexity"] = list(item)
                row["byte_perplexity"] = [item[0], item[1] * 5]
                row["bits_per_byte"] = [item[0], item[1] * 5]
                row["filter"] = "none"
            cfg = res["configs"][task]
            cfg["output_type"] = "loglikelihood_rolling"
            cfg["metric_list"] = [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}]
            res["higher_is_better"][task] = {"word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False}
            res["results"][task] = {"alias": task, "word_perplexity,none": LM.weighted_perplexity(items)}

    return MF.write_lm_eval_run(out, model, mutate=mutate)


def test_perplexity_fall_is_a_gain(tmp_path):
    base, ft = _perplexity_run(tmp_path / "b", "base"), _perplexity_run(tmp_path / "f", "finetuned")
    ra = load_run(base)
    assert ra.metrics["diff_demo_math_gen"] == "word_perplexity"
    g = score_gaps(join_runs(base, ft), None, FAST).set_index("name")
    math_row, ml_row = g.loc["diff_demo_math_gen"], g.loc["diff_demo_multilingual_mc"]
    assert math_row.lm_eval_a == pytest.approx(4.79) and math_row.lm_eval_b == pytest.approx(3.35)
    assert ml_row.lm_eval_a == pytest.approx(6.10) and ml_row.lm_eval_b == pytest.approx(7.25)
    assert math_row.delta == pytest.approx(math.log(4.79) - math.log(3.35))  # nats/word gained
    assert math_row.delta > 0 and math_row.ci_low > 0 and ml_row.delta < 0 and ml_row.ci_high < 0
    assert math_row.unit == "nats/word" and "per word" in math_row.quantity
    assert g.loc["math", "delta"] == pytest.approx(math_row.delta)  # a category of one perplexity task
    # the overall row pools the accuracy tasks only (nats cannot be added to points)
    assert set(g.loc["overall", "tasks"]) == {"diff_demo_safety_refusal", "diff_demo_code_mc"}
    assert g.loc["overall", "unit"] == "points"


def test_join_reproduces_lm_eval_scores_of_each_model():
    j = join_runs(MF.RUNS / "base", MF.RUNS / "finetuned")
    g = score_gaps(j, None, FAST).set_index("name")
    for role, col in (("base", "lm_eval_a"), ("finetuned", "lm_eval_b")):
        res = load_run(MF.RUNS / role).results["results"]
        for task, spec in MF.TASKS.items():
            assert g.loc[task, col] == pytest.approx(res[task][f"{spec[2]},{spec[3]}"], abs=1e-12)


def test_word_counts_must_match(tmp_path):
    base = _perplexity_run(tmp_path / "b", "base")

    ft = _perplexity_run(tmp_path / "f", "finetuned")
    f = next(next(ft.iterdir()).glob("samples_diff_demo_math_gen_*.jsonl"))
    lines = [json.loads(x) for x in f.read_text().splitlines()]
    lines[0]["word_perplexity"][1] += 1
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(UserError, match="counts differ for diff_demo_math_gen"):
        join_runs(base, ft)
