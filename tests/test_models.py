"""models.py: loading through the hook, pair checks, layer resolution, decoder-layer discovery."""

from __future__ import annotations

import copy
import sys
import types

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

    fake = types.ModuleType("lm_diff.organisms")
    fake.resolve_spec = lambda spec: d if spec == "organisms://tiny/base" else None
    monkeypatch.setitem(sys.modules, "lm_diff.organisms", fake)
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
