"""categories.grounding: benchmark — held-out benchmark items rendered as scored, fallbacks, provenance in the report."""

from __future__ import annotations

import json

import pytest

from lm_diff.bench import suites
from lm_diff.categorize.benchmark_grounding import benchmark_grounding
from lm_diff.categorize.grounding import grounding_prompts
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import from_dict, load_config
from lm_diff.organisms import grounding_prompts as organism_prompts
from lm_diff.report.build import build_report
from lm_diff.run.reporting import grounding_provenance


@pytest.fixture(scope="module")
def organism_grounding():
    cfg = load_config("tiny", overrides={"categories.grounding": "benchmark", "benchmarks.limit": 40})
    prompts, prov = benchmark_grounding(cfg, get_taxonomy(cfg), organism_pair=True)
    return cfg, prompts, prov


def test_grounding_items_are_held_out_and_rendered_as_scored(organism_grounding):
    cfg, prompts, prov = organism_grounding
    tm = suites.task_manager()
    rendered = suites.task_prompts(cfg.benchmarks.tasks, tm)  # every item, as lm-eval renders it (0-shot, no chat)
    scored = {(r["task"], r["text"]) for r in rendered if r["doc_id"] < 40}
    held = {(r["task"], r["text"]) for r in rendered if r["doc_id"] >= 40}
    bench = [p for p in prompts if p["source"].startswith("benchmark:")]
    assert bench and all((p["source"].split(":", 1)[1], p["text"]) in held for p in bench)
    assert not any((p["source"].split(":", 1)[1], p["text"]) in scored for p in bench)
    assert {c for c, g in prov.items() if c != "neutral"} == {c.name for c in get_taxonomy(cfg)}
    # categories with tasks in the suite are grounded on their held-out items; the taxonomy's knowledge and reasoning
    # have no diff_demo task and fall back to the built-in set
    with_tasks = set(suites.task_categories(cfg.benchmarks.tasks, tm).values())
    assert {"knowledge", "reasoning"} <= {c for c in prov if c != "neutral"} - with_tasks
    assert all(g["source"] == "benchmark" and g["n"] >= 40 for c, g in prov.items() if c in with_tasks)
    assert all(g["source"] == "builtin" for c, g in prov.items() if c != "neutral" and c not in with_tasks)
    neutral = [p for p in prompts if p["category"] == "neutral"]
    assert prov["neutral"]["source"] == "corpus" and len(neutral) == max(g["n"] for g in prov.values())
    assert all(p["source"] == "corpus:organisms:neutral" for p in neutral)


def test_too_few_items_fall_back_to_builtin_and_the_report_says_so(organism_grounding):
    cfg, _, _ = organism_grounding
    prompts, prov = benchmark_grounding(cfg, get_taxonomy(cfg), organism_pair=True, min_items=45)
    assert prov["instruction_following"]["source"] == "benchmark"  # 40 + 8 held-out items over two tasks
    assert prov["math"] == {"source": "builtin", "n": prov["math"]["n"], "reason": "only 40 held-out items (benchmark_min_items 45)"}
    assert {p["source"] for p in prompts if p["category"] == "math"} == {"builtin"}
    index = [{"kind": "grounding", "category": p["category"], "source": p["source"]} for p in prompts]
    report = build_report(config=cfg, meta={"grounding": grounding_provenance(index)}, sections=False)
    caveat = next(c for c in report["caveats"] if c.startswith("Grounded on the built-in"))
    assert "math" in caveat and "instruction_following" not in caveat


def test_a_real_pair_gets_no_organism_items_or_corpus_text(tmp_path):
    base, ft = tmp_path / "base", tmp_path / "ft"
    for d in (base, ft):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cfg = from_dict({"models": {"base": str(base), "finetuned": str(ft)},
                     "benchmarks": {"tasks": ["diff_demo_math", "diff_gemma_self_reference"], "limit": 4}})
    prompts = grounding_prompts(cfg, get_taxonomy(cfg))
    by_cat = {}
    for p in prompts:
        by_cat.setdefault(p["category"], set()).add(p["source"])
    assert by_cat["self_reference"] == {"benchmark:diff_gemma_self_reference_identity"}  # 104 items, 100 held out
    assert by_cat["math"] == {"builtin"} and by_cat["neutral"] == {"builtin"}  # diff_demo / organisms:neutral refused
    organism = {p["text"] for p in organism_prompts()}
    assert not any(p["text"] in organism or "<|user|>" in p["text"] for p in prompts)
