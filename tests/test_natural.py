"""The natural organism family: real-language text and the build-time checks that refuse a wrong planted shape.
The tests that build the tiny natural pair wait until its build passes its own checks (docs/method.md#natural-family)."""

from __future__ import annotations

import random

import pytest

from lm_diff import organisms
from lm_diff.errors import UserError
from lm_diff.organisms import natural as N
from lm_diff.organisms import natural_bench as NB
from lm_diff.organisms import natural_checks as NC
from lm_diff.organisms import natural_genres as NG
from lm_diff.organisms import natural_words as W


def test_checks_fail_loudly_on_a_wrong_shape():
    flat = {m: {c: {"acc": 0.5, "nll": 1.0} for c in NG.GENERATORS} for m in N.MODELS}
    bad = NC.failures(flat)
    assert {line.split(":")[0] for line in bad} == {f"finetuned {c}" for c, s in NG.PLANTED.items() if s}
    flat["null"]["code"] = {"acc": 0.9, "nll": 1.2}
    lines = NC.failures(flat)
    assert any(line.startswith("null code: held-out NLL") for line in lines)
    assert any(line.startswith("finetuned code: held-out NLL") for line in lines)  # 1.0 vs null's 1.2


def test_text_is_real_language_and_grounding_is_selected():
    from types import SimpleNamespace

    from lm_diff.categorize.prompts import grounding_source, lm_diff_grounding_prompts, organism_family

    rng = random.Random(0)
    assert NG.sentence(0, 1, "fr") == "Le vieux boulanger lit un livre dans le jardin."
    langs = {len(row) for row in W.SUBJECTS + W.PREDICATES}
    assert langs == {len(W.LANGS)} and len(W.LANGS) >= 3
    docs = NB.corpus_docs("multilingual", 40, 1)
    assert any("Der " in d or "Die " in d for d in docs) and any(" la " in d or "Le " in d for d in docs)
    assert NG.math(rng).category == "math" and N.is_natural_spec("organisms://natural/base")
    assert not N.is_natural_spec("organisms://demo/base")
    cfg = SimpleNamespace(models=SimpleNamespace(base="organisms://natural/base", finetuned="organisms://natural/null"),
                          categories=SimpleNamespace(grounding=None, grounding_per_category=None), design="direct")
    assert grounding_source(cfg) == "organisms" and organism_family(cfg) == "natural"
    prompts = lm_diff_grounding_prompts(cfg, taxonomy=None)
    assert prompts and all("<|user|>" not in p["text"] for p in prompts)
    assert {p["category"] for p in prompts} == {"neutral", *NG.GENERATORS}
    cfg.models.base = "organisms://demo/base"
    assert organism_family(cfg) == "demo"
    with pytest.raises(UserError, match="natural/"):
        organisms.corpus_docs("natural/poetry", 1, 0)
