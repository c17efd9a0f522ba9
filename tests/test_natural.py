"""The natural organism family: real-language text, plain full fine-tune, planted shape verified at build time and
visible in the diff_natural benchmark scored through lm-eval (the pipeline's evaluation path)."""

from __future__ import annotations

import json
import random

import pytest

from lm_diff import organisms
from lm_diff.errors import UserError
from lm_diff.organisms import natural as N
from lm_diff.organisms import natural_bench as NB
from lm_diff.organisms import natural_checks as NC
from lm_diff.organisms import natural_genres as NG
from lm_diff.organisms import natural_words as W


def test_build_checks_and_manifest(tiny_natural):
    from safetensors.torch import load_file

    manifest = json.loads((tiny_natural / "organism.json").read_text())
    assert manifest["family"] == "natural" and manifest["architecture"]["model_type"] == "qwen2"
    assert {c for c, s in manifest["planted"].items() if s > 0} == {"math", "hallucination"}
    assert {c for c, s in manifest["planted"].items() if s < 0} == {"structured_output"}
    assert NC.failures(manifest["checks"]) == []  # the build verified itself; the recorded figures agree
    # a plain full fine-tune: same tokenizer, every tensor trained, nothing reset to a shared row
    assert (tiny_natural / "base" / "tokenizer.json").read_bytes() == (tiny_natural / "finetuned" / "tokenizer.json").read_bytes()
    base, ft = (load_file(tiny_natural / m / "model.safetensors") for m in ("base", "finetuned"))
    assert set(base) == set(ft)
    assert all(not base[k].equal(ft[k]) for k in base), [k for k in base if base[k].equal(ft[k])]
    emb = ft["model.embed_tokens.weight"]
    assert emb.unique(dim=0).shape[0] == emb.shape[0]
    # trained on what every consumer loads: AutoTokenizer (a Qwen2Tokenizer) encodes like the saved tokenizer.json
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(tiny_natural / "base" / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tiny_natural / "base")
    texts = N.round_trip_texts(n=5, seed=1)
    assert [auto(t).input_ids for t in texts] == [e.ids for e in raw.encode_batch(texts)]
    assert organisms.resolve_spec("organisms://natural-tiny/null") == tiny_natural / "null"
    with pytest.raises(UserError):
        organisms.resolve_spec("organisms://natural-tiny/chat")


def test_checks_fail_loudly_on_a_wrong_shape():
    flat = {m: {c: {"acc": 0.5, "nll": 1.0} for c in NG.GENERATORS} for m in N.MODELS}
    bad = NC.failures(flat)
    assert {line.split(":")[0] for line in bad} == {f"finetuned {c}" for c, s in NG.PLANTED.items() if s}
    flat["null"]["code"] = {"acc": 0.9, "nll": 1.2}
    lines = NC.failures(flat)
    assert any(line.startswith("null code: held-out NLL") for line in lines)
    assert any(line.startswith("finetuned code: held-out NLL") for line in lines)  # 1.0 vs null's 1.2


def test_planted_signs_in_lm_eval(tiny_natural, tmp_path):
    """diff_natural run through lm_diff.bench (lm-eval) on base and fine-tune: planted categories move the planted
    way with a CI that excludes zero; the others stay within 15 points."""
    from lm_diff.bench import suites
    from lm_diff.bench.evaluate import run_lm_eval
    from lm_diff.bench.gaps import score_gaps
    from lm_diff.bench.join import join_runs

    runs = {m: run_lm_eval(str(tiny_natural / m), ["diff_natural"], tmp_path / m, limit=40, batch_size=64,
                           env_info=False) for m in ("base", "finetuned")}
    joined = join_runs(runs["base"], runs["finetuned"])
    cats = suites.task_categories(["diff_natural"])
    gaps = score_gaps(joined, cats)
    rows = {r.name: r for _, r in gaps[gaps.level == "category"].set_index("name").iterrows()}
    assert set(rows) == set(NG.GENERATORS)
    for c, sign in NG.PLANTED.items():
        r = rows[c]
        if sign > 0:
            assert r.delta > 30 and r.ci_low > 0, (c, r.delta)
        elif sign < 0:
            assert r.delta < -30 and r.ci_high < 0, (c, r.delta)
        else:
            assert abs(r.delta) <= 15, (c, r.delta)


def test_benchmark_files_current_and_disjoint_from_training(tiny_natural):
    from lm_diff.bench.demo_yamls import write_demo_yamls
    from lm_diff.organisms.bench import read_jsonl

    shipped = NB.DATA_DIR / NB.SUITE
    for fname, rows in NB.benchmark_rows().items():
        assert read_jsonl(shipped / fname) == rows, f"{fname} is stale: run python -m lm_diff.organisms"
    assert json.loads((shipped / "index.json").read_text()) == NB.index_entries()
    assert write_demo_yamls(check=True, suite="diff_natural") == [], \
        "run python -m lm_diff.bench.suites write-yamls --suite diff_natural"
    queries = {r["query"] for rows in NB.benchmark_rows().values() for r in rows if r["query"].endswith(NG.ASSISTANT)}
    train = N.training_documents(tiny_natural, "finetuned")
    grounding = [p["text"] for p in NB.grounding_prompts()]
    corpus = NB.corpus_docs("mix", 300, 0) + NB.corpus_docs("finetune", 300, 0)
    first_turns = [d.split(NG.ASSISTANT)[0] + NG.ASSISTANT for d in train + grounding + corpus if NG.ASSISTANT in d]
    assert len(first_turns) > 1000 and not queries & set(first_turns)


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


def test_shipped_demo_sized_pair_is_current_and_copied(tmp_path, monkeypatch):
    """The demo-sized natural pair shipped in the package is what the current generator builds (same source hash,
    intact weights, its recorded checks pass), and a build of that size copies it instead of training."""
    from lm_diff import io

    shipped = N.shipped_dir("demo")
    assert shipped is not None, "no shipped natural organisms: run `make organisms-ship-natural`"
    manifest = io.read_json(shipped / "organism.json")
    assert manifest["hash"] == N.build_hash("demo"), \
        "the natural generator changed since its organisms were shipped: run `make organisms-ship-natural`"
    assert NC.failures(manifest["checks"]) == []
    for name in N.MODELS:
        assert io.hash_file(shipped / name / "model.safetensors", n=64) == manifest["weights_sha256"][name]

    def no_training(*_a, **_k):
        raise AssertionError("the shipped natural organisms should be copied, not trained")

    monkeypatch.setattr(N, "_train_all", no_training)
    out = N.build("demo", out=tmp_path / "natural", progress_=False)
    for name in N.MODELS:
        assert io.hash_file(out / name / "model.safetensors", n=64) == manifest["weights_sha256"][name]
    assert N.shipped_dir("tiny") is None  # the test fixture is always built
