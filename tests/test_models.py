"""models.py: loading through the hook, pair checks, layer resolution, decoder-layer discovery."""

from __future__ import annotations

import copy

import pytest
from helpers import make_tiny_model, make_tokenizer

from lm_diff.config import ModelsConfig
from lm_diff.errors import UserError
from lm_diff.models import check_pair, decoder_layers, decoder_layers_path, hidden_size, load_model, resolve_layers


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_decoder_layers_common_architectures():
    assert decoder_layers_path(make_tiny_model("llama", layers=3)) == "model.layers"
    assert decoder_layers_path(make_tiny_model("gemma2", layers=3)) == "model.layers"
    gpt2 = make_tiny_model("gpt2", layers=3)
    assert decoder_layers_path(gpt2) == "transformer.h" and len(decoder_layers(gpt2)) == 3
    assert hidden_size(gpt2) == 64


def test_decoder_layers_multimodal_gemma3():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma3ForConditionalGeneration"):
        pytest.skip("no Gemma3 in this transformers")
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
                  patch_size=14)
    try:
        m = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    except Exception as exc:  # noqa: BLE001 - config API drift
        pytest.skip(f"cannot build a tiny Gemma3: {exc}")
    path = decoder_layers_path(m)
    assert path.endswith("layers") and "vision" not in path and len(decoder_layers(m)) == 2
    assert hidden_size(m) == 32


def test_resolve_layers():
    m = make_tiny_model("llama", layers=5)
    assert resolve_layers(["middle"], m) == [2]
    assert resolve_layers(["middle", 0, 4, 2], m) == [0, 2, 4]
    assert resolve_layers("middle", 6) == [3]
    with pytest.raises(UserError, match="out of range.*5 decoder layers"):
        resolve_layers([5], m)


def test_tokenizer_mismatch_one_clear_error(tok):
    other = make_tokenizer(vocab_size=300)  # the tiny corpus yields ~460 tokens at most
    a, b = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    with pytest.raises(UserError) as err:
        check_pair([tok, other], [a, b])
    msg = str(err.value)
    assert "different tokenizers" in msg and "vocabulary differs" in msg and "base model" in msg
    assert msg.count("\n") == 0


def test_special_token_mismatch(tok):
    other = copy.deepcopy(tok)
    other.eos_token = "<unk>"
    a, b = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    with pytest.raises(UserError, match="special token eos_token differs"):
        check_pair(tok, other, a, b)


def test_hidden_size_and_layer_mismatch(tok):
    a = make_tiny_model("llama", 0, hidden=64, layers=2)
    with pytest.raises(UserError, match=r"different hidden sizes \(64 vs 128\)"):
        check_pair([tok, tok], [a, make_tiny_model("llama", 1, hidden=128, layers=2)])
    with pytest.raises(UserError, match=r"different numbers of decoder layers \(2 vs 3\)"):
        check_pair([tok, tok], [a, make_tiny_model("llama", 1, hidden=64, layers=3)])
    check_pair([tok, copy.deepcopy(tok)], [a, make_tiny_model("llama", 2, hidden=64, layers=2)])  # fine


def test_load_local_dir_and_organisms(tmp_path, tok, monkeypatch):
    d = tmp_path / "m"
    make_tiny_model("gemma2", 0, out=d)
    tok.save_pretrained(str(d))
    model, t = load_model(str(d), ModelsConfig())
    assert not model.training and t.get_vocab() == tok.get_vocab()
    assert next(model.parameters()).dtype.is_floating_point

    import lm_diff.models as models_mod

    monkeypatch.setattr(models_mod, "resolve_spec", lambda spec: d if spec == "organisms://tiny/base" else None)
    model2, _ = load_model("organisms://tiny/base", ModelsConfig(dtype="bfloat16"))
    import torch

    assert next(model2.parameters()).dtype == torch.bfloat16

    with pytest.raises(UserError, match="no such directory"):
        load_model(str(tmp_path / "missing"), ModelsConfig())


def test_hub_id_passes_revision_and_trust_remote_code_off(monkeypatch):
    import transformers

    seen = {}

    def fake(name, **kw):
        seen[name] = kw
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(UserError, match="cannot load model 'org/name'"):
        load_model("org/name", ModelsConfig(revision="abc"))
    assert seen["org/name"] == {"revision": "abc", "trust_remote_code": False}


def test_fingerprint_hashes_full_content_and_caches(tmp_path, monkeypatch):
    import os

    import lm_diff.models.fingerprint as fpm
    from lm_diff.models import model_fingerprint

    monkeypatch.setenv("LM_DIFF_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    weights = d / "model.safetensors"
    data = bytearray(os.urandom(5 << 20))  # 5 MiB: the old first/last-MiB hash missed the middle
    weights.write_bytes(bytes(data))
    first = model_fingerprint(str(d), d)
    assert model_fingerprint(str(d), d) == first and len(list((tmp_path / "cache" / "hashes").iterdir())) == 2
    st = weights.stat()
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert weights.stat().st_size == st.st_size
    changed = model_fingerprint(str(d), d)
    assert changed["content"] != first["content"]
    # cached by (path, size, mtime): an unchanged file is not read again
    calls = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: calls.append(str(f)) or real_open(f, *a, **k))
    assert model_fingerprint(str(d), d) == changed
    assert not [c for c in calls if c.endswith("model.safetensors")]
    assert fpm.file_sha256(weights) == __import__("hashlib").sha256(bytes(data)).hexdigest()


def test_fingerprint_hub_uses_the_cached_commit(tmp_path, monkeypatch):
    import lm_diff.models.fingerprint as fpm
    from lm_diff.models import model_fingerprint

    monkeypatch.setattr(fpm.hf_constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_fingerprint("org/name", None) == {"spec": "org/name", "revision": None, "commit": None}
    refs = tmp_path / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    (refs / "v2").write_text("b" * 40)
    assert model_fingerprint("org/name", None)["commit"] == "a" * 40
    assert model_fingerprint("org/name", None, "v2")["commit"] == "b" * 40
    assert model_fingerprint("org/name", None, "c" * 40)["commit"] == "c" * 40


def test_device_auto_loads_with_device_map_and_sources_load_lazily(tmp_path, tok, monkeypatch):
    import transformers

    import lm_diff.models as models_mod
    from lm_diff.config import load_config
    from lm_diff.models import layer_count, load_tokenizer, model_pair, model_sources

    d = tmp_path / "m"
    make_tiny_model("llama", 0, layers=2, out=d)
    tok.save_pretrained(str(d))
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(src, **kw):
        seen.update(kw)
        kw.pop("device_map", None)
        return real(src, **kw)

    monkeypatch.setattr(models_mod.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(d), ModelsConfig(device="auto"))
    assert seen["device_map"] == "auto"
    seen.clear()
    load_model(str(d), ModelsConfig())
    assert "device_map" not in seen

    cfg = load_config("demo", overrides={"models.base": str(d), "models.finetuned": str(d)})
    pair = model_pair(cfg)
    calls = []
    monkeypatch.setattr(models_mod, "load_model", lambda spec, c: calls.append(spec) or ("model", None))
    sources = model_sources(cfg, pair)
    assert [s.name for s in sources] == ["A", "B"] and calls == []  # nothing loaded yet
    assert sources[1].load() == "model" and calls == [str(d)]
    assert sources[0].identity == pair.fingerprints[0] and "content" in sources[0].identity
    assert load_tokenizer(cfg, pair).get_vocab() == tok.get_vocab()
    assert layer_count(cfg, pair) == 2
