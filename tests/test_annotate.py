"""LLM annotator (lm_diff.categorize.annotate): end to end against a local fake OpenAI-compatible server, parsing, F1 filter,
cache, error messages, Cohen's kappa."""

from __future__ import annotations

import json
import math
import socket

import pandas as pd
import pytest

from lm_diff.categorize.annotate import (
    annotate_latents,
    compare_with_grounded,
    detection_metrics,
    split_examples,
)
from lm_diff.categorize.llm_messages import (
    explain_messages,
    format_activating,
    normalise_category,
    parse_detection,
    parse_explanation,
)
from lm_diff.categorize.taxonomy import load_taxonomy_file
from lm_diff.config import AnnotatorConfig, packaged_configs_dir
from lm_diff.errors import UserError

try:  # tests/ may or may not be a package
    from .fake_llm_server import FakeLLMServer
except ImportError:
    from fake_llm_server import FakeLLMServer

TAXONOMY = load_taxonomy_file(packaged_configs_dir() / "taxonomy.yaml")
NAMES = [c.name for c in TAXONOMY]

FILLER = ["the", "cat", "sat", "on", "a", "mat", "while", "birds", "sang", "softly", "near", "old", "trees", "today"]


def window(words: list[str], active: set[str], value: float = 3.0) -> dict:
    """A Delphi-style window: tokens with leading spaces, acts > 0 on the active words."""
    tokens = [words[0]] + [" " + w for w in words[1:]]
    acts = [value if w in active else 0.0 for w in words]
    return {"text": "".join(tokens), "tokens": tokens, "acts": acts}


def plain(words: list[str]) -> dict:
    return window(words, set())


def toy_examples() -> dict:
    """Latent 1 fires on 'def' (code), 2 on 'plus' (math), 3 on a different word each time (unexplainable),
    4 has no examples at all; latent 2 is keyed by str as it would be after a JSON round trip."""
    ex: dict = {}
    ex[1] = {
        "activating": [window(FILLER[i % 7 : i % 7 + 3] + ["def", "f(x):", "return", "x"], {"def"}, 1.0 + i) for i in range(16)],
        "non_activating": [plain(FILLER[i : i + 6]) for i in range(8)],
    }
    ex["2"] = {
        "activating": [window([str(i), "plus", str(i + 1), "is", str(2 * i + 1)], {"plus"}, 2.0 + i % 5) for i in range(16)],
        "non_activating": [plain(FILLER[i : i + 5]) for i in range(8)],
    }
    uniq = [f"w{i}x" for i in range(16)]
    ex[3] = {
        "activating": [window(FILLER[:4] + [uniq[i]], {uniq[i]}, 5.0 - i * 0.1) for i in range(16)],
        "non_activating": [plain(FILLER[i : i + 5]) for i in range(8)],
    }
    return ex


def cfg(url: str, model: str = "fake", **kw) -> AnnotatorConfig:
    base = dict(endpoint=url, model=model, examples=8, test_examples=6, non_activating=6, timeout=10.0)
    base.update(kw)
    return AnnotatorConfig(**base)


LATENTS = pd.DataFrame({"latent": [1, 2, 3, 4]})


@pytest.fixture
def server():
    with FakeLLMServer(lifetime_s=60) as srv:
        yield srv


# ----------------------------------------------------------------------------------------------------------------------
# end to end


def test_end_to_end_fake_server_and_cache(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    df = annotate_latents(LATENTS, toy_examples(), TAXONOMY, cfg(server.url), cache_path=cache, progress=False)
    assert list(df.columns[:6]) == ["latent", "explanation", "category", "detection_f1", "detection_balanced_acc", "kept"]
    r = df.set_index("latent")
    assert r.loc[1, "category"] == "code" and '"def"' in r.loc[1, "explanation"]
    assert r.loc[1, "detection_f1"] == 1.0 and r.loc[1, "detection_balanced_acc"] == 1.0 and r.loc[1, "kept"]
    assert r.loc[2, "category"] == "math" and r.loc[2, "kept"]  # str key "2" found for int latent 2
    assert r.loc[3, "category"] == "none" and r.loc[3, "detection_f1"] < 0.7 and not r.loc[3, "kept"]
    assert r.loc[4, "explanation"] == "" and r.loc[4, "category"] == "none" and not r.loc[4, "kept"]
    assert math.isnan(r.loc[4, "detection_f1"])
    assert r.loc[1, "n_test"] == 12
    n_calls = len(server.requests)
    assert n_calls == 6  # explain + detect for latents 1-3, nothing for 4
    # prompts: explainer sees markers and never a held-out example; the scorer sees no markers
    explain_prompt = server.requests[0]["messages"][1]["content"]
    detect_prompt = server.requests[1]["messages"][1]["content"]
    assert "<<def>>" in explain_prompt and "Activations:" in explain_prompt
    assert "<<" not in detect_prompt and detect_prompt.count("Example ") == 12
    # cache: one JSONL line per response; a rerun makes no call and gives the same table
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == n_calls and all({"key", "response"} <= set(x) for x in lines)
    df2 = annotate_latents(LATENTS, toy_examples(), TAXONOMY, cfg(server.url), cache_path=cache, progress=False)
    assert len(server.requests) == n_calls
    pd.testing.assert_frame_equal(df, df2)
    # a different model is a different cache key
    annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, cfg(server.url, "fake-fenced"), cache_path=cache, progress=False)
    assert len(server.requests) == n_calls + 2


def test_cache_survives_a_damaged_line_and_serves_without_server(tmp_path):
    cache = tmp_path / "c.jsonl"
    with FakeLLMServer() as srv:
        url = srv.url
        df = annotate_latents(LATENTS.head(2), toy_examples(), TAXONOMY, cfg(url), cache_path=cache, progress=False)
    with cache.open("a") as fh:
        fh.write('{"key": "truncated...\n')
    # the server is gone: everything must come from the cache
    df2 = annotate_latents(LATENTS.head(2), toy_examples(), TAXONOMY, cfg(url), cache_path=cache, progress=False)
    pd.testing.assert_frame_equal(df, df2)


def test_malformed_answers_retry_once(server):
    ex = toy_examples()
    good = annotate_latents(LATENTS.head(2), ex, TAXONOMY, cfg(server.url), progress=False)
    n0 = len(server.requests)
    once = annotate_latents(LATENTS.head(2), ex, TAXONOMY, cfg(server.url, "fake-bad-once"), progress=False)
    assert len(server.requests) - n0 == 8  # each explain and detect call retried once
    pd.testing.assert_frame_equal(good, once)
    fenced = annotate_latents(LATENTS.head(2), ex, TAXONOMY, cfg(server.url, "fake-fenced"), progress=False)
    pd.testing.assert_frame_equal(good, fenced)
    n1 = len(server.requests)
    bad = annotate_latents(LATENTS.head(2), ex, TAXONOMY, cfg(server.url, "fake-bad"), progress=False)
    assert len(server.requests) - n1 == 4  # one retry each, then give up (no detection without an explanation)
    assert (bad["category"] == "none").all() and (bad["explanation"] == "").all() and not bad["kept"].any()
    badcat = annotate_latents(LATENTS.head(2), ex, TAXONOMY, cfg(server.url, "fake-badcat"), progress=False)
    assert (badcat["category"] == "none").all()  # constrained to taxonomy ∪ {none}
    assert badcat["kept"].all()  # the explanation itself is still scored and kept


def test_parse_explanation_variants():
    ok = ('{"explanation": "Python def keyword", "category": "code"}', "Python def keyword", "code")
    assert parse_explanation(ok[0], NAMES) == (ok[1], ok[2], "")
    fenced = 'Sure.\n```json\n{"explanation": "x  y", "category": "Instruction Following"}\n```\nDone {}'
    assert parse_explanation(fenced, NAMES) == ("x y", "instruction_following", "")
    e, c, problem = parse_explanation('{"explanation": "pizza words", "category": "cooking"}', NAMES)
    assert e == "pizza words" and c is None and "cooking" in problem and "none" in problem
    assert parse_explanation('{"category": "code"}', NAMES)[0] is None
    assert parse_explanation("no json here", NAMES)[:2] == (None, None)
    assert parse_explanation("", NAMES)[:2] == (None, None)
    assert parse_explanation('{"explanation": "broken", "category": "math",', NAMES)[:2] == ("broken", "math")
    assert parse_explanation('{"Explanation": "caps keys", "Category": "NONE"}', NAMES) == ("caps keys", "none", "")
    assert parse_explanation('[1, 2]', NAMES)[0] is None
    assert normalise_category("self-reference", NAMES) == "self_reference"
    assert normalise_category(None, NAMES) is None and normalise_category(3, NAMES) is None


def test_parse_detection_variants():
    assert parse_detection("[1, 0, 1]", 3) == [1, 0, 1]
    assert parse_detection("Answer: [true, false, true] thanks", 3) == [1, 0, 1]
    assert parse_detection('{"labels": ["yes", "no"]}', 2) == [1, 0]
    assert parse_detection("```json\n[0,0]\n```", 2) == [0, 0]
    assert parse_detection("[1, 0]", 3) is None  # wrong length
    assert parse_detection("[1, 2, 0]", 3) is None  # not 0/1
    assert parse_detection("ones and zeros", 2) is None


def test_prompt_markers_and_split():
    ex = window(["a", "b", "c", "d"], {"b", "c"}, 4.0)
    ex["acts"][2] = 2.0
    s = format_activating(ex)
    assert s.startswith("a <<b c>> d") and '("b", 10), ("c", 5)' in s
    assert format_activating({"text": "raw only"}) == "raw only"
    msgs = explain_messages([ex], TAXONOMY)
    assert "- code: Reading and writing program code." in msgs[0]["content"] and "- none:" in msgs[0]["content"]
    acts = [window(["x"], {"x"}, float(v)) for v in range(20)]
    train, test, non = split_examples({"activating": acts, "non_activating": [plain(["y"])] * 30}, 8, 5, 7)
    assert len(test) == 5 and len(train) == 8 and len(non) == 7
    assert not {id(e) for e in train} & {id(e) for e in test}
    assert train[0]["acts"][0] == 19.0  # explainer gets the strongest remaining examples
    tmax = sorted(e["acts"][0] for e in test)
    assert tmax[0] < 5 and tmax[-1] > 14  # held-out examples span the activation range
    train, test, _ = split_examples({"activating": acts[:3], "non_activating": []}, 8, 5, 7)
    assert len(test) == 1 and len(train) == 2  # never more than half held out


# ----------------------------------------------------------------------------------------------------------------------
# F1 filter and statistics


def test_detection_metrics_hand_computed():
    # truth 1,1,1,0,0 ; pred 1,0,1,1,0 -> tp 2, fn 1, fp 1, tn 1
    m = detection_metrics([1, 1, 1, 0, 0], [1, 0, 1, 1, 0])
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["balanced_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert detection_metrics([1, 0], [0, 0])["f1"] == 0.0
    assert detection_metrics([1, 1], [1, 1])["balanced_acc"] == 1.0


def test_f1_threshold_filter(server):
    ex = toy_examples()
    strict = annotate_latents(LATENTS, ex, TAXONOMY, cfg(server.url, f1_min=0.7), progress=False).set_index("latent")
    f1_3 = strict.loc[3, "detection_f1"]
    assert not strict.loc[3, "kept"] and f1_3 < 0.7
    loose = annotate_latents(LATENTS, ex, TAXONOMY, cfg(server.url, f1_min=0.0), progress=False).set_index("latent")
    assert loose.loc[[1, 2, 3], "kept"].all() and not loose.loc[4, "kept"]  # NaN score is never kept
    assert (loose["detection_f1"].fillna(-1) == strict["detection_f1"].fillna(-1)).all()
    capped = annotate_latents(LATENTS, ex, TAXONOMY, cfg(server.url, max_latents=2), progress=False)
    assert list(capped["latent"]) == [1, 2]


def test_compare_with_grounded_uses_the_one_kappa_and_its_degenerate_case():
    # Both sides label every kept latent "none": kappa is 0/0 -> NaN (stats.cohens_kappa, as sklearn), agreement 1.
    ann = pd.DataFrame({"latent": [1, 2, 3], "category": ["none"] * 3, "kept": [True, True, False]})
    grounded = pd.DataFrame({"latent": [1], "category": ["code"], "auroc": [0.6], "assigned": [False]})
    out = compare_with_grounded(ann, grounded)
    assert out["n"] == 2 and out["agreement"] == 1.0 and math.isnan(out["kappa"])
    # llm (code, math) vs grounded (code, none): p_o = 1/2, p_e = 1/4 -> kappa 1/3
    ann = pd.DataFrame({"latent": [1, 2], "category": ["code", "math"], "kept": [True, True]})
    grounded = pd.DataFrame({"latent": [1, 2], "category": ["code", "math"], "auroc": [0.9, 0.8], "assigned": [True, False]})
    assert compare_with_grounded(ann, grounded)["kappa"] == pytest.approx(1 / 3)


def test_compare_with_grounded(server):
    ann = annotate_latents(LATENTS, toy_examples(), TAXONOMY, cfg(server.url, f1_min=0.0), progress=False)
    # grounded: latent 1 -> code (best AUROC among two assigned), 2 -> safety, 3 unassigned
    grounded = pd.DataFrame(
        {
            "latent": [1, 1, 2, 3],
            "category": ["math", "code", "safety", "code"],
            "auroc": [0.8, 0.9, 0.95, 0.6],
            "assigned": [True, True, True, False],
        }
    )
    out = compare_with_grounded(ann, grounded)
    # kept: latents 1, 2, 3 -> llm (code, math, none) vs grounded (code, safety, none); p_o = 2/3,
    # p_e = (1*1 + 1*1)/9 = 2/9 (code, none; math and safety unmatched) -> kappa = (6/9 - 2/9)/(7/9) = 4/7
    assert out["n"] == 3 and out["agreement"] == pytest.approx(2 / 3) and out["kappa"] == pytest.approx(4 / 7)


# ----------------------------------------------------------------------------------------------------------------------
# errors and plugin


def test_unreachable_endpoint_names_url_and_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(UserError, match=r"categories\.annotator\.endpoint") as info:
        annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, cfg(url), progress=False)
    assert f"{url}/chat/completions" in str(info.value)


def test_timeout_and_auth_errors(monkeypatch):
    with FakeLLMServer(slow_s=1.0, api_key="s3cret") as srv:
        monkeypatch.delenv("LM_DIFF_TEST_KEY", raising=False)
        with pytest.raises(UserError, match="LM_DIFF_TEST_KEY"):
            annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, cfg(srv.url, api_key_env="LM_DIFF_TEST_KEY"), progress=False)
        monkeypatch.setenv("LM_DIFF_TEST_KEY", "s3cret")
        df = annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, cfg(srv.url, api_key_env="LM_DIFF_TEST_KEY"), progress=False)
        assert df.loc[0, "kept"]
        c = cfg(srv.url, "fake-slow", api_key_env="LM_DIFF_TEST_KEY", timeout=0.2)
        with pytest.raises(UserError, match=r"categories\.annotator\.timeout"):
            annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, c, progress=False)
        with pytest.raises(UserError, match="404"):
            annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, cfg(srv.url[: -len("/v1")] + "/api", api_key_env="LM_DIFF_TEST_KEY"), progress=False)


def test_missing_model_and_missing_column():
    with pytest.raises(UserError, match="annotator.model"):
        annotate_latents(LATENTS, {}, TAXONOMY, AnnotatorConfig(), progress=False)
    with pytest.raises(UserError, match="'latent' column"):
        annotate_latents(pd.DataFrame({"x": [1]}), {}, TAXONOMY, AnnotatorConfig(model="m"), progress=False)


def test_custom_backend_and_run_config(tmp_path):
    from lm_diff.config import from_dict

    calls = []

    def backend(messages):
        calls.append(messages)
        return '{"explanation": "always", "category": "safety"}' if "Categories:" in messages[0]["content"] else "[1]"

    run_cfg = from_dict({"categories": {"method": "llm", "annotator": {"model": "x", "test_examples": 1, "non_activating": 0}}})
    df = annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, run_cfg, backend=backend, progress=False)
    assert df.loc[0, "category"] == "safety" and df.loc[0, "detection_f1"] == 1.0 and len(calls) == 2


def test_config_checks():
    from lm_diff.config import from_dict
    from lm_diff.errors import ConfigError

    with pytest.raises(ConfigError, match="f1_min"):
        from_dict({"categories": {"annotator": {"f1_min": 1.5}}})
    with pytest.raises(ConfigError, match="timeout"):
        from_dict({"categories": {"annotator": {"timeout": 0}}})


def test_plugin_registers_llm_annotator():
    import pluggy

    from lm_diff.categorize import annotate as annotators
    from lm_diff.plugins import hookspecs

    pm = pluggy.PluginManager("lm_diff")
    pm.add_hookspecs(hookspecs)
    pm.register(annotators)
    (result,) = pm.hook.lm_diff_annotators()
    assert result == {"llm": annotate_latents}


def test_local_hf_backend(tmp_path):
    """A tiny random local model answers garbage: the annotator survives it (category none, nothing kept)."""
    try:
        from .helpers import make_tiny_model, make_tokenizer
    except ImportError:
        from helpers import make_tiny_model, make_tokenizer
    from lm_diff.categorize.llm_backends import HFChat

    tok = make_tokenizer(tmp_path / "m")
    make_tiny_model("llama", layers=1, hidden=32, vocab_size=len(tok), out=tmp_path / "m")
    c = AnnotatorConfig(model=str(tmp_path / "m"), examples=2, test_examples=1, non_activating=1, max_new_tokens=4)
    chat = HFChat(c)
    n = {"calls": 0}

    def counting(messages):
        n["calls"] += 1
        return chat(messages)

    counting.name = chat.name
    df = annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, c, backend=counting, cache_path=tmp_path / "c.jsonl", progress=False)
    assert n["calls"] >= 2 and df.loc[0, "category"] in NAMES + ["none"]
    assert isinstance(chat([{"role": "user", "content": "hi"}]), str)
    with pytest.raises(UserError, match="annotator.model"):
        annotate_latents(LATENTS.head(1), toy_examples(), TAXONOMY, AnnotatorConfig(model=str(tmp_path / "missing")), progress=False)
