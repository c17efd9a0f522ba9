"""Which grounding prompts a pair gets: organisms' text only for organism pairs, benchmark items or the real-language set otherwise."""

from __future__ import annotations

import json

from lm_diff.categorize.grounding import grounding_prompts
from lm_diff.categorize.prompts import grounding_source, is_organism_spec
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import from_dict
from lm_diff.organisms import grounding_prompts as organism_prompts


def _organism_texts() -> set[str]:
    return {p["text"] for p in organism_prompts()}


def test_organism_pair_is_grounded_on_organism_prompts():
    cfg = from_dict({"models": {"base": "organisms://tiny/base", "finetuned": "organisms://tiny/finetuned"}})
    assert grounding_source(cfg) == "organisms"
    texts = {p["text"] for p in grounding_prompts(cfg, get_taxonomy(cfg))}
    assert texts and texts <= _organism_texts()


def test_a_real_pair_never_gets_organism_text(tmp_path):
    base, ft = tmp_path / "base", tmp_path / "ft"
    for d in (base, ft):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cfg = from_dict({"models": {"base": str(base), "finetuned": str(ft)}})
    assert grounding_source(cfg) == "benchmark"  # diff_demo items and organisms:neutral text are organism text: refused
    prompts = grounding_prompts(cfg, get_taxonomy(cfg))
    assert {p["category"] for p in prompts} >= {"safety", "multilingual", "code", "math", "neutral"}
    organism = _organism_texts()
    assert not any(p["text"] in organism for p in prompts)
    assert not any("<|user|>" in p["text"] or "<|end|>" in p["text"] for p in prompts)
    # a hub id is a real pair too
    hub = from_dict({"models": {"base": "google/gemma-2-2b", "finetuned": "google/gemma-2-2b-it"}})
    assert grounding_source(hub) == "benchmark"


def test_one_organism_and_one_real_model_is_not_an_organism_pair(tmp_path):
    cfg = from_dict({"models": {"base": "organisms://tiny/base", "finetuned": str(tmp_path)}})
    assert grounding_source(cfg) == "benchmark"
    assert is_organism_spec("organisms://demo/base") and not is_organism_spec(str(tmp_path))


def test_explicit_source_wins():
    cfg = from_dict({"models": {"base": "org/a", "finetuned": "org/b"}, "categories": {"grounding": "organisms"}})
    assert grounding_source(cfg) == "organisms"


def test_grounding_per_category_caps_each_category_in_order():
    from lm_diff.categorize.prompts import cap_per_category

    rows = [{"text": str(i), "category": c} for i, c in enumerate("aabacbbn")]
    assert [r["text"] for r in cap_per_category(rows, 2)] == ["0", "1", "2", "4", "5", "7"]
    assert cap_per_category(rows, None) == rows
    cfg = from_dict({"models": {"base": "org/a", "finetuned": "org/b"}, "categories": {"grounding_per_category": 3}})
    prompts = grounding_prompts(cfg, get_taxonomy(cfg))
    counts = {c: sum(p["category"] == c for p in prompts) for c in {p["category"] for p in prompts}}
    assert set(counts.values()) == {3}
