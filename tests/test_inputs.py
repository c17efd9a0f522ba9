"""Bad or thin input said out loud: a config without models, a corpus that runs short, a budget that cuts documents."""

from __future__ import annotations

import pytest
from helpers import make_tokenizer

from lm_diff.capture.corpus import read_corpus
from lm_diff.capture.tokenize import budget_note, plan_chunks
from lm_diff.cli import main
from lm_diff.config import CorpusSource, load_config
from lm_diff.errors import ConfigError, UserError
from lm_diff.models import model_pair


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_a_config_without_models_is_refused_unless_it_asks_for_the_demo(tmp_path, capsys):
    bare = tmp_path / "bare.yaml"
    bare.write_text("stats:\n  bootstrap: 100\n")
    cfg = load_config(bare)  # report / ci configs that only set statistics still load
    with pytest.raises(UserError, match=r"bare.yaml: models is not set.*models: \{base: BASE.*models: demo"):
        model_pair(cfg)
    out = tmp_path / "out"
    assert main(["run", str(bare), "--out", str(out)]) == 2
    assert "models is not set" in capsys.readouterr().err and not out.exists()  # refused before anything is written
    assert main(["plan", str(bare)]) == 2 and "models is not set" in capsys.readouterr().err
    demo = tmp_path / "demo.yaml"
    demo.write_text("models: demo\n")
    pair = load_config(demo)
    assert (pair.models.base, pair.models.finetuned) == ("organisms://demo/base", "organisms://demo/finetuned")
    assert load_config(demo).to_dict()["models"]["base"] == "organisms://demo/base"  # the snapshot reloads as is
    half = tmp_path / "half.yaml"
    half.write_text("models:\n  base: org/a\n")
    with pytest.raises(ConfigError, match="models.finetuned is not set"):
        load_config(half)


def test_the_token_budget_says_what_it_cut(tok):
    docs = [{"text": " ".join(["alpha beta gamma"] * 40), "source": "long"}, {"text": "one two", "source": "s"}]
    plan = plan_chunks(docs, tok, 32, 50, 0.0)
    assert plan["cut"]["doc_id"] == 0 and plan["cut"]["kept"] == 50 and plan["cut"]["n_tokens"] > 100
    assert plan["dropped"] == 1
    note = budget_note(plan, 50)
    assert "capture.max_tokens (50) cut document 0 (source long) to 50 of its" in note
    assert "left out the last 1 document(s)" in note
    whole = plan_chunks(docs, tok, 32, 10_000, 0.0)
    assert budget_note(whole, 10_000) is None


def test_a_short_corpus_is_named_and_one_smaller_than_a_batch_refused(tok, tmp_path, capsys):
    txt = tmp_path / "few.txt"
    txt.write_text("\n\n".join(f"paragraph {i} of a small corpus with a few words" for i in range(20)))
    src = [CorpusSource(path=str(txt))]
    docs = read_corpus(src, tok, 5000, seed=0, prompt_tokens=100, min_tokens=64)
    n = sum(d["n_tokens"] for d in docs)
    assert 64 < n < 5000 and len(docs) == 20
    err = capsys.readouterr().err
    assert f"capture.corpus[0] ({txt}) ran out at {n:,} tokens of its 5,000-token share" in " ".join(err.split())
    read_corpus(src, tok, 5000, seed=0, prompt_tokens=10 * n, min_tokens=64)
    assert "fewer than the" in capsys.readouterr().err  # the prompts outnumber the corpus
    with pytest.raises(UserError, match=r"capture.corpus holds .* fewer than one crosscoder training batch "
                                        r"\(crosscoder.batch_size = 10,000\)"):
        read_corpus(src, tok, 50_000, seed=0, prompt_tokens=100, min_tokens=10_000)
