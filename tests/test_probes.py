"""Perplexity probes (lm_diff.bench.probes, tasks/diff_probes) and what a task's size can resolve (lm_diff.power):
the held-out split, the lm-eval tasks, the minimum detectable gaps against hand-computed values and simulation, and
the report showing accuracy and perplexity gaps side by side."""

from __future__ import annotations

import json
import math
import os
from io import StringIO

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy.stats import norm

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_k, _v)

from lm_diff.bench import probes, suites  # noqa: E402
from lm_diff.bench.gaps import score_gaps  # noqa: E402
from lm_diff.bench.metric_kinds import MEAN, METRIC_KINDS  # noqa: E402
from lm_diff.categorize.builtin_grounding import builtin_prompts, builtin_rows  # noqa: E402
from lm_diff.categorize.taxonomy import get_taxonomy  # noqa: E402
from lm_diff.config import RunConfig, StatsConfig  # noqa: E402
from lm_diff.link.table import link_categories  # noqa: E402
from lm_diff.power import (  # noqa: E402
    min_detectable_accuracy_gap,
    min_detectable_mean_gap,
    paired_binary_power,
)
from lm_diff.report.build import build_report  # noqa: E402
from lm_diff.report.markdown import to_markdown  # noqa: E402
from lm_diff.report.terminal import print_summary  # noqa: E402

Z_A, Z_B = norm.ppf(0.975), norm.ppf(0.8)
TAXONOMY = [c.name for c in get_taxonomy()]


# ---------------------------------------------------------------------------------------------------------------------
# minimum detectable gaps


def test_accuracy_gap_against_hand_computed_values():
    # n = 100, psi = 0.2: solve 10 d = 1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.2 - d^2); by hand d = 0.12382
    d = min_detectable_accuracy_gap(100, 0.2, 0.05, 0.8)
    assert d == pytest.approx(0.12382, abs=2e-5)
    # Connor's sample size for that gap gives back n
    assert (Z_A * math.sqrt(0.2) + Z_B * math.sqrt(0.2 - d * d)) ** 2 / d ** 2 == pytest.approx(100, rel=1e-9)
    # at ceiling (no discordant item) psi = d: sqrt(n d) - z_a = z_b sqrt(1 - d); n = 80 by hand: d = 0.09525
    c = min_detectable_accuracy_gap(80, 0.0, 0.05, 0.8)
    assert c == pytest.approx(0.09525, abs=2e-5)
    assert math.sqrt(80 * c) - Z_A == pytest.approx(Z_B * math.sqrt(1 - c), abs=1e-9)
    # more items resolve less; more disagreement needs more; too few items resolve nothing
    assert min_detectable_accuracy_gap(400, 0.2, 0.05) < d < min_detectable_accuracy_gap(100, 0.4, 0.05)
    assert min_detectable_accuracy_gap(3, 0.0, 0.05) is None
    assert paired_binary_power(d, 100, 0.2, 0.05) == pytest.approx(0.8, abs=1e-9)


def test_accuracy_gap_has_the_stated_power_under_mcnemar():
    """Simulated pairs at exactly the computed gap: McNemar's z test rejects in about 80 % of draws."""
    n, psi, alpha = 200, 0.25, 0.05
    d = min_detectable_accuracy_gap(n, psi, alpha, 0.8)
    rng = np.random.default_rng(0)
    cells = rng.multinomial(n, [(psi + d) / 2, (psi - d) / 2, 1 - psi], size=20000)
    b, c = cells[:, 0], cells[:, 1]
    z = np.abs(b - c) / np.sqrt(np.maximum(b + c, 1))
    assert (z > Z_A).mean() == pytest.approx(0.8, abs=0.03)


def test_mean_gap_against_hand_value_and_simulation():
    assert min_detectable_mean_gap(1.0, 16, 0.05, 0.8) == pytest.approx((1.959964 + 0.841621) / 4, abs=1e-6)
    assert min_detectable_mean_gap(1.0, 1, 0.05) is None and min_detectable_mean_gap(float("nan"), 10, 0.05) is None
    n, sd = 64, 0.3
    m = min_detectable_mean_gap(sd, n, 0.05, 0.8)
    x = np.random.default_rng(1).normal(m, sd, size=(20000, n))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
    assert (np.abs(t) > Z_A).mean() == pytest.approx(0.8, abs=0.03)


# ---------------------------------------------------------------------------------------------------------------------
# the probe text: held out from grounding, and the lm-eval tasks


def test_probe_rows_are_held_out_from_grounding():
    for cat in TAXONOMY:
        rows = probes.probe_rows(cat)
        held = builtin_rows([cat], include_neutral=False, part="probe")
        assert len(rows) == len(held) >= 15, cat
        assert [r["text"] for r in rows] == [probes.transcript(r["messages"]) for r in held]
        assert all("<|" not in r["text"] and r["text"].startswith("User: ") for r in rows)
    every = builtin_rows(include_neutral=False)
    grounding = {p["text"] for p in builtin_prompts(None, include_neutral=False)}
    probe_text = {r["text"] for c in TAXONOMY for r in probes.probe_rows(c)}
    assert not grounding & probe_text  # a probe document is never a grounding prompt
    assert len(grounding) + len(probe_text) == len(every)  # and the two parts cover the set


def test_diff_probes_resolve_and_build_in_task_manager():
    tm = suites.task_manager()
    cats = suites.task_categories(["diff_probes"], tm)
    assert cats == {f"diff_probe_{c}": c for c in TAXONOMY}
    task = tm.load(["diff_probe_multilingual"])["tasks"]["diff_probe_multilingual"]
    docs = list(task.eval_docs)
    assert task.OUTPUT_TYPE == "loglikelihood_rolling"
    assert [task.doc_to_target(d) for d in docs] == [r["text"] for r in probes.probe_rows("multilingual")]
    assert suites.task_prompts(["diff_probe_multilingual"], tm) == []  # nothing to capture: no prompt


def test_demo_organism_probes_are_shipped_held_out_and_resolve():
    """diff_demo_probes: the organisms' own test-split text, as the generator writes it, never a grounding prompt of
    theirs; a group of its own, not part of diff_demo."""
    from lm_diff.bench.paths import data_root
    from lm_diff.organisms.probe_text import probe_docs

    tm = suites.task_manager()
    cats = suites.task_categories(["diff_demo_probes"], tm)
    generated = probe_docs()
    assert cats == {f"diff_demo_probe_{c}": c for c in generated} and len(cats) == 11
    grounding = {json.loads(line)["text"] for line in (data_root() / "grounding" / "default.jsonl").open()}
    for c, rows in generated.items():
        assert [r["text"] for r in probes.probe_rows(c, "diff_demo")] == [r["text"] for r in rows]  # shipped = generator
        assert len({r["text"] for r in rows}) == len(rows) == 16 and not grounding & {r["text"] for r in rows}
    assert not any(probes.is_probe_task(t) for t in suites.task_categories(["diff_demo"], tm))
    assert all(probes.is_probe_task(t) for t in cats) and probes.is_probe_task("g::diff_probe_code")


def test_natural_organism_probes_are_shipped_held_out_and_resolve():
    """diff_natural_probes: the natural organisms' own test-split text, as the generator writes it, never one of
    their grounding prompts (the shipped file nor the generator's), no exchange of which opens like a grounding prompt
    or a capture-corpus document (those come from the train split); a group of its own, not part of diff_natural nor
    of configs/natural.yaml's tasks."""
    from lm_diff.bench.paths import data_root
    from lm_diff.config import load_config
    from lm_diff.organisms import natural_bench
    from lm_diff.organisms.natural_genres import ASSISTANT, PLANTED
    from lm_diff.organisms.probe_text import natural_probe_docs

    def first_turn(text: str) -> str:
        return text.split(ASSISTANT)[0] + ASSISTANT if ASSISTANT in text else text

    tm = suites.task_manager()
    cats = suites.task_categories(["diff_natural_probes"], tm)
    generated = natural_probe_docs()
    assert cats == {f"diff_natural_probe_{c}": c for c in generated} and set(generated) == set(PLANTED)
    shipped_grounding = {json.loads(line)["text"] for line in (data_root() / "grounding" / "natural.jsonl").open()}
    grounding = shipped_grounding | {p["text"] for p in natural_bench.grounding_prompts()}
    corpus = natural_bench.corpus_docs("mix", 300, 0) + natural_bench.corpus_docs("finetune", 300, 0)
    train_turns = {first_turn(t) for t in [*grounding, *corpus] if ASSISTANT in t}
    for c, rows in generated.items():
        texts = [r["text"] for r in rows]
        assert [r["text"] for r in probes.probe_rows(c, "diff_natural")] == texts  # shipped = generator
        assert len(set(texts)) == len(texts) == 16 and not grounding & set(texts), c
        assert not train_turns & {first_turn(t) for t in texts}, c
    assert len(train_turns) > 300
    # the right behaviour's text: the carried sum (math +), valid JSON (structured_output -)
    assert all("because" in t for t in (r["text"] for r in generated["math"]))
    assert all(json.loads(t.split("assistant ", 1)[1].rsplit(" <|im_end|>", 1)[0])
               for t in (r["text"] for r in generated["structured_output"]))
    assert not any(probes.is_probe_task(t) for t in suites.task_categories(["diff_natural"], tm))
    assert all(probes.is_probe_task(t) for t in cats)
    assert "diff_natural_probes" not in load_config("natural").benchmarks.tasks
    task = tm.load(["diff_natural_probe_math"])["tasks"]["diff_natural_probe_math"]
    assert task.OUTPUT_TYPE == "loglikelihood_rolling"
    assert [task.doc_to_target(d) for d in task.eval_docs] == [r["text"] for r in generated["math"]]


# ---------------------------------------------------------------------------------------------------------------------
# score gaps and the report


def _joined(n_mc: int = 60, n_probe: int = 16) -> pd.DataFrame:
    """A math MC task at ceiling for both models and the math probe, where B's per-byte log-likelihood rises."""
    rng = np.random.default_rng(3)
    mc = pd.DataFrame({"task": "mc_math", "doc_id": range(n_mc), "metric": "acc", "score_a": 1.0, "score_b": 1.0,
                       "weight": 1.0})
    ll_a = rng.normal(-1.2, 0.1, n_probe)
    pr = pd.DataFrame({"task": "diff_probe_math", "doc_id": range(n_probe), "metric": "byte_perplexity",
                       "score_a": ll_a, "score_b": ll_a + rng.normal(0.05, 0.02, n_probe),
                       "weight": rng.integers(200, 400, n_probe).astype(float)})
    j = pd.concat([mc, pr], ignore_index=True)
    j.attrs = {"kinds": {"mc_math": MEAN, "diff_probe_math": METRIC_KINDS["byte_perplexity"]},
               "higher_is_better": {"mc_math": True, "diff_probe_math": True},
               "task_categories": {"mc_math": "math", "diff_probe_math": "math"}}
    return j


def test_probe_rows_stay_apart_and_every_row_says_what_it_resolves():
    cfg = StatsConfig(bootstrap=300, permutations=300)
    g = score_gaps(_joined(), None, cfg)
    by = {(r.level, r.name): r for r in g.itertuples()}
    cat, probe, mc = by[("category", "math")], by[("probe", "math")], by[("task", "mc_math")]
    assert cat.tasks == ["mc_math"] and cat.delta == 0 and by[("overall", "overall")].tasks == ["mc_math"]
    assert probe.tasks == ["diff_probe_math"] and probe.unit == "nats/byte" and probe.ci_low > 0
    assert mc.mds == pytest.approx(100 * min_detectable_accuracy_gap(60, 0.0, 0.05, 0.8))
    p = by[("task", "diff_probe_math")]
    d = _joined().query("task == 'diff_probe_math'")
    w = d.weight.to_numpy() / d.weight.mean()
    sd = np.std((d.score_b - d.score_a).to_numpy() * w, ddof=1)
    assert p.mds == pytest.approx(min_detectable_mean_gap(sd, 16, 0.05, 0.8)) and probe.mds == pytest.approx(p.mds)


def test_report_shows_accuracy_and_perplexity_gaps():
    cfg = RunConfig()
    cfg.stats.bootstrap, cfg.stats.permutations = 300, 300
    gaps = score_gaps(_joined(), None, cfg.stats)
    rep = build_report(config=cfg, linked=link_categories(None, gaps), scores=gaps, sections=False)
    math_row = next(c for c in rep["categories"] if c["name"] == "math")
    assert math_row["score_gap"]["delta"] == 0 and math_row["perplexity_gap"]["delta"] > 0
    assert math_row["perplexity_gap"]["mds"] > 0 and math_row["score_gap"]["mds"] > 0
    assert "math" in rep["summary"]["perplexity"] and "nats/byte" in rep["summary"]["perplexity"]
    assert {t["name"]: t["probe"] for t in rep["tasks"]} == {"mc_math": False, "diff_probe_math": True}
    md = to_markdown(rep)
    assert "perplexity Δ (nats/byte)" in md and "detectable |Δ|" in md and "Held-out text moved" in md
    buf = StringIO()
    print_summary(rep, Console(file=buf, width=80))
    text = buf.getvalue()
    assert "×0.9" in text and max(len(line) for line in text.splitlines()) <= 80


def test_exposure_leaves_the_probe_documents_out():
    """Probe documents are never captured (no prompt): counted as zero activation they would dilute the category's
    exposure; link() measures exposure over the scored prompts only."""
    from lm_diff.link.table import link

    j = _joined(n_mc=6, n_probe=4)
    acts = pd.DataFrame({"task": "mc_math", "doc_id": range(6), "latent": 7, "set": "S", "act": 2.0})
    cats = pd.DataFrame({"latent": [7], "set": ["S"], "category": ["math"]})
    out = link(j, j.attrs["task_categories"], StatsConfig(bootstrap=100, permutations=100), categories=cats,
               doc_acts=acts)
    ex = next(c for c in out["categories"] if c["name"] == "math")["exposure"]
    assert ex["S"] == pytest.approx(2.0) and ex["n_docs_S"] == 6 and set(ex["by_task"]) == {"mc_math"}


def test_builtin_fallback_holds_the_probe_rows_out_when_the_suite_scores_them(tmp_path):
    """Benchmark grounding's built-in fallback leaves the probe rows out exactly when the suite scores the built-in
    probes; without them it keeps every row (runs without probes ground as before)."""
    from lm_diff.categorize.grounding import grounding_prompts
    from lm_diff.config import from_dict

    base, ft = tmp_path / "base", tmp_path / "ft"
    for d in (base, ft):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    probe_text = {r["text"] for r in probes.probe_rows("knowledge")}
    counts = {}
    for tasks in (["diff_gemma_self_reference"], ["diff_gemma_self_reference", "diff_probe_math"]):
        cfg = from_dict({"models": {"base": str(base), "finetuned": str(ft)},
                         "benchmarks": {"tasks": tasks, "limit": 4}})
        knowledge = [p["text"] for p in grounding_prompts(cfg, get_taxonomy(cfg)) if p["category"] == "knowledge"]
        counts[len(tasks)] = len(knowledge)
        held = {probes.transcript(r["messages"]) for r in builtin_rows(["knowledge"], False, part="probe")}
        assert held == probe_text and (not held & set(knowledge)) == (len(tasks) == 2)  # no template: plain text
    assert counts == {1: len(builtin_rows(["knowledge"], include_neutral=False)),
                      2: len(builtin_rows(["knowledge"], include_neutral=False, part="grounding"))}
