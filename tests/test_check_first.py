"""The pair is checked before any benchmark runs: a mismatched or unloadable pair fails in seconds, not after hours of
lm-eval on both models."""

from __future__ import annotations

import pytest
from helpers import make_tiny_model, make_tokenizer

from lm_diff.config import from_dict
from lm_diff.errors import UserError
from lm_diff.models import check_pair_early, model_pair
from lm_diff.run import pipeline


def _pair_dirs(tmp_path, hidden_b=64, layers_b=4):
    tok = make_tokenizer(tmp_path / "tok")
    dirs = []
    for name, hidden, layers in (("a", 64, 4), ("b", hidden_b, layers_b)):
        make_tiny_model("llama", layers=layers, hidden=hidden, out=tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    return dirs


def test_mismatched_pair_is_refused_before_the_benchmarks(tmp_path, monkeypatch):
    a, b = _pair_dirs(tmp_path, hidden_b=96, layers_b=3)
    cfg = from_dict({"models": {"base": a, "finetuned": b}})
    called = []
    monkeypatch.setattr(pipeline, "eval_stage", lambda *args, **kw: called.append(1))
    with pytest.raises(UserError, match="hidden size 64 but .* has 96.*4 layers but .* has 3"):
        pipeline.run(cfg, tmp_path / "out")
    assert not called
    assert not (tmp_path / "out" / "stages").exists() or not any((tmp_path / "out" / "stages").iterdir())


def test_matching_pair_passes_and_returns_the_tokenizer(tmp_path):
    a, b = _pair_dirs(tmp_path)
    cfg = from_dict({"models": {"base": a, "finetuned": b}})
    tok = check_pair_early(cfg, model_pair(cfg))
    assert tok("hello world")["input_ids"]


def test_missing_model_is_one_message(tmp_path):
    cfg = from_dict({"models": {"base": str(tmp_path / "nope"), "finetuned": str(tmp_path / "nope2")}})
    with pytest.raises(UserError):
        check_pair_early(cfg, model_pair(cfg))
