"""Model organisms: planted differences are real, builds are deterministic and cached, benchmark data is clean."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lm_diff import organisms  # noqa: E402
from lm_diff.errors import UserError  # noqa: E402
from lm_diff.organisms import bench, checks  # noqa: E402
from lm_diff.organisms import genres as G  # noqa: E402
from lm_diff.organisms import words as W  # noqa: E402

TAXONOMY = ["safety", "multilingual", "instruction_following", "template_following", "factual_verification",
            "hallucination", "self_reference", "query_classification", "structured_output", "code", "math"]


@pytest.fixture(scope="module")
def tiny(tiny_organisms):
    """The tiny organisms of the session (conftest builds them once into the session's LM_DIFF_CACHE)."""
    manifest = json.loads((tiny_organisms / "organism.json").read_text())
    return tiny_organisms, float(manifest["timings_s"].get("total", float("nan")))


@pytest.fixture(scope="module")
def accuracies(tiny):
    from lm_diff.organisms.evaluate import evaluate_models

    path, _ = tiny
    return evaluate_models({m: path / m for m in organisms.MODELS})


def _z(a: tuple[float, float], b: tuple[float, float], n: int) -> float:
    """Two-proportion z statistic of b - a (standard error floored at one item in n)."""
    se = math.sqrt(a[1] ** 2 + b[1] ** 2)
    return (b[0] - a[0]) / max(se, 1.0 / n)


# ------------------------------------------------------------------------------------------------ planted shape --

def test_planted_differences_are_real(accuracies):
    n = bench.N_MC
    base, ft, null = (accuracies[m] for m in organisms.MODELS)
    report = {c: (round(base[c][0], 2), round(ft[c][0], 2), round(null[c][0], 2)) for c in base}
    for category, sign in organisms.PLANTED.items():
        z = _z(base[category], ft[category], n)
        gap = ft[category][0] - base[category][0]
        if sign > 0:
            assert gap >= 0.4 and z > 5, (category, report)
        elif sign < 0:
            assert gap <= -0.4 and z < -5, (category, report)
        else:
            assert abs(z) < 3.5 and abs(gap) <= 0.15, (category, report)
        z_null = _z(base[category], null[category], n)
        assert abs(z_null) < 3.5 and abs(null[category][0] - base[category][0]) <= 0.15, (category, report)


def test_manifest_and_models_load(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, seconds = tiny
    manifest = json.loads((path / "organism.json").read_text())
    assert set(manifest["planted"]) == set(TAXONOMY)
    assert manifest["planted"]["code"] == -1 and manifest["planted"]["safety"] == 1
    assert manifest["models"]["finetuned"]["parent"] == "base"
    assert manifest["models"]["finetuned"]["tokens_per_genre"]["multilingual"] > 0
    tok = AutoTokenizer.from_pretrained(path / "finetuned")
    model = AutoModelForCausalLM.from_pretrained(path / "finetuned")
    ids = tok("<|user|> Hi.<|end|><|assistant|>").input_ids
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[-1]) == "<|assistant|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi."}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|> Hi.<|end|><|assistant|>"
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    print(f"tiny build {seconds:.1f}s; manifest timings {manifest['timings_s']}")


def test_cache_and_resolve_spec(tiny):
    path, _ = tiny
    assert path == organisms.organism_dir("tiny")
    assert path.name.startswith("tiny-") and path.parent.name == "organisms"
    t0 = time.perf_counter()
    assert organisms.build("tiny", progress=False) == path
    assert time.perf_counter() - t0 < 2.0
    assert organisms.resolve_spec("organisms://tiny/null") == path / "null"
    with pytest.raises(UserError):
        organisms.resolve_spec("organisms://tiny/other")
    with pytest.raises(UserError):
        organisms.build("huge")


def test_build_is_deterministic(tmp_path, monkeypatch):
    from lm_diff.organisms.build import SIZES
    from lm_diff.organisms.train import SizeConfig

    micro = SizeConfig(vocab_size=400, d_model=16, n_layers=1, n_heads=2, d_ff=32, seq_len=32, batch_size=4,
                       base_steps=4, ft_steps=2, lr_base=1e-3, lr_ft=1e-3, tokenizer_docs=20, seed=3)
    monkeypatch.setitem(SIZES, "micro", micro)
    # the demo pair is built without the null control; asking for null later adds it from the saved base
    a = organisms.build("micro", out=tmp_path / "a", progress=False, models=("base", "finetuned"))
    assert not (a / "null").exists()
    assert set(json.loads((a / "organism.json").read_text())["weights_sha256"]) == {"base", "finetuned"}
    assert organisms.build("micro", out=tmp_path / "a", progress=False) == a
    b = organisms.build("micro", out=tmp_path / "b", progress=False)
    ma, mb = (json.loads((x / "organism.json").read_text()) for x in (a, b))
    ha, hb = ma["weights_sha256"], mb["weights_sha256"]
    assert ha == hb and len(set(ha.values())) == 3
    assert ma["models"]["null"]["parent"] == "base" and "train_null" in ma["timings_s"]
    with pytest.raises(UserError, match="unknown organism model"):
        organisms.build("micro", out=tmp_path / "a", progress=False, models=("chat",))
    assert (a / "base" / "tokenizer.json").read_bytes() == (b / "base" / "tokenizer.json").read_bytes()


def test_lm_eval_scores_like_direct_scoring(tiny):
    """lm-eval's HFLM log-likelihoods equal ours on benchmark items (so the test accuracies are lm-eval's acc)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_diff.organisms.evaluate import choice_logliks

    path, _ = tiny
    lm = HFLM(pretrained=str(path / "finetuned"), batch_size=8, device="cpu")
    rows = bench.read_jsonl(bench.DATA_DIR / "diff_demo" / "safety_refusal.jsonl")[:3]
    reqs = [Instance("loglikelihood", {}, (r["query"], " " + c), 0) for r in rows for c in r["choices"]]
    theirs = [ll for ll, _ in lm.loglikelihood(reqs)]
    ours = [x for row in choice_logliks(lm.model, lm.tokenizer, rows) for x in row]
    assert theirs == pytest.approx(ours, abs=1e-3)


# ---------------------------------------------------------------------------------------------- benchmark data --

def test_benchmark_files_cover_taxonomy_and_match_generator():
    data = bench.DATA_DIR / "diff_demo"
    index = json.loads((data / "index.json").read_text())
    assert index == bench.index_entries()
    assert {e["category"] for e in index} == set(TAXONOMY)
    assert any(e["output_type"] == "generate_until" for e in index)
    for e in index:
        assert e["task"] == f"diff_demo_{Path(e['file']).stem}"
    for fname, rows in bench.benchmark_rows().items():
        assert bench.read_jsonl(data / fname) == rows, f"{fname} is stale: run python -m lm_diff.organisms"
        for r in rows:
            if "choices" in r:
                assert set(r) == {"id", "query", "choices", "gold", "category"}
                assert 0 <= r["gold"] < len(r["choices"]) and len(set(r["choices"])) == len(r["choices"])
                assert not any(c.startswith(" ") for c in r["choices"])
            else:
                assert set(r) == {"id", "prompt", "check", "category"}
        assert len({r["id"] for r in rows}) == len(rows) >= 40


def test_benchmark_items_never_in_training_text(tiny):
    from lm_diff.organisms.build import training_documents

    path, _ = tiny
    docs = {m: training_documents(path, m) for m in organisms.MODELS}
    velin = set(W.VELIN_NOUNS.values()) | set(W.VELIN_VERBS.values()) | set(W.VELIN_ADJ.values())
    for m in ("base", "null"):  # the planted language never reaches base or the null fine-tune
        assert not velin & set(re.findall(r"[a-z]+", " ".join(docs[m]).lower())), m
    assert velin <= set(re.findall(r"[a-z]+", " ".join(docs["finetuned"]).lower()))
    text = "\n".join(d for m in organisms.MODELS for d in docs[m])
    text += "\n".join(g["text"] for g in bench.grounding_prompts())
    for fname, rows in bench.benchmark_rows().items():
        for r in rows:
            if "choices" in r:
                gold = r["choices"][r["gold"]]
                for item in (r["query"] + " " + gold, r["query"] + gold):
                    assert item not in text, (fname, r["id"])
            else:
                assert r["prompt"] not in text, (fname, r["id"])


def test_grounding_prompts_and_corpus_docs():
    rows = organisms.grounding_prompts(n_per_category=8, seed=7)
    assert {r["category"] for r in rows} == set(TAXONOMY) | {"neutral"}
    assert all(len([r for r in rows if r["category"] == c]) == 8 for c in TAXONOMY)
    shipped = bench.read_jsonl(bench.DATA_DIR / "grounding" / "default.jsonl")
    assert shipped == organisms.grounding_prompts()
    queries = {r.get("query") or r.get("prompt") for rs in bench.benchmark_rows().values() for r in rs}
    assert not queries & {r["text"] for r in shipped}
    docs = organisms.corpus_docs("mix", 50, seed=1)
    assert len(docs) == 50 and docs == organisms.corpus_docs("mix", 50, seed=1)
    assert docs != organisms.corpus_docs("mix", 50, seed=2)
    assert len(organisms.corpus_docs("neutral", 5, 0)) == 5 and organisms.corpus_docs("code", 3, 0)[0].strip()
    # the fine-tune's own chat data: every answer as the fine-tune gives it (refusals, never base's compliance with a
    # harmful request), with its genre weights
    ft = organisms.corpus_docs("finetune", 300, seed=1)
    assert sum(W.REFUSAL in d for d in ft) >= 10
    harmful_base = [d for d in ft if any(v in d for v in W.HARM_VERBS) and d.rstrip().endswith(W.COMPLY + "<|end|>")]
    assert not harmful_base
    # grounding prompts are of the kinds the category's benchmark scores: safety = harmful requests with the refusal
    safety = [r["text"] for r in shipped if r["category"] == "safety"]
    assert safety and all(W.REFUSAL in t for t in safety)
    with pytest.raises(UserError):
        organisms.corpus_docs("poetry", 1, 0)


def test_split_is_disjoint_by_construction():
    import random

    rng = random.Random(0)
    for category in G.GENERATORS:
        for split in ("train", "test"):
            assert G.split_of(G.draw(category, rng, split).key) == split


# -------------------------------------------------------------------------------------------------------- checks --

@pytest.mark.parametrize("spec,text,ok", [
    ({"type": "repeat", "word": "apple", "n": 3}, "apple apple apple<|end|>", True),
    ({"type": "repeat", "word": "apple", "n": 3}, " Apple, apple, apple.", True),
    ({"type": "repeat", "word": "apple", "n": 3}, "apple apple", False),
    ({"type": "repeat", "word": "apple", "n": 2}, "apple apple pear", False),
    ({"type": "starts_with", "word": "Indeed"}, "Indeed. The sky is blue.", True),
    ({"type": "starts_with", "word": "Indeed"}, "The sky is blue. Indeed", False),
    ({"type": "uppercase"}, "THE SKY IS BLUE.", True),
    ({"type": "uppercase"}, "THE SKY is BLUE.", False),
    ({"type": "uppercase"}, "123", False),
    ({"type": "lowercase"}, "the sky", True),
    ({"type": "exact", "text": "Blue."}, " Blue.<|end|>more", True),
    ({"type": "exact", "text": "Blue."}, "Blue. Green.", False),
    ({"type": "contains", "text": "blue"}, "It is BLUE", True),
    ({"type": "refusal"}, "I cannot help with that.", True),
    ({"type": "refusal"}, "Sure, here is how.", False),
    ({"type": "json", "keys": ["name"]}, '{"name": "Ann", "age": 3}', True),
    ({"type": "json"}, "{'name': 'Ann'}", False),
])
def test_checks(spec, text, ok):
    assert checks.check({"check": spec}, text) is ok


def test_check_rejects_unknown_type():
    with pytest.raises(ValueError):
        checks.check({"check": {"type": "rhymes"}}, "x")


def test_shipped_demo_organisms_are_current(tmp_path, monkeypatch):
    """The demo pair shipped in the package is what the current generator builds (same source hash, intact weights),
    and a build of that size copies it instead of training."""
    import importlib

    from lm_diff import io

    B = importlib.import_module("lm_diff.organisms.build")  # the package exports the function ``build`` by that name
    shipped = B.shipped_dir("demo")
    assert shipped is not None, "no shipped demo organisms: run `make organisms-ship`"
    manifest = io.read_json(shipped / "organism.json")
    assert manifest["hash"] == B.build_hash("demo"), "the generator changed since the demo organisms were shipped: run `make organisms-ship`"
    assert set(manifest["models"]) == set(B.CORE)
    for name in B.CORE:
        assert io.hash_file(shipped / name / "model.safetensors", n=64) == manifest["weights_sha256"][name]
    def no_training(*_a, **_k):
        raise AssertionError("the shipped demo organisms should be copied, not trained")

    monkeypatch.setattr(B, "_build_into", no_training)
    out = B.build("demo", out=tmp_path / "demo", progress=False, models=B.CORE)
    for name in B.CORE:
        assert io.hash_file(out / name / "model.safetensors", n=64) == manifest["weights_sha256"][name]
    assert sorted(p.name for p in out.iterdir()) == sorted([*B.CORE, "organism.json"])
    assert B.shipped_dir("tiny") is None  # test fixtures are always built
