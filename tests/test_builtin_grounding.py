"""The built-in real-language grounding set (lm_diff/data/grounding/builtin/) and its loader: coverage of the default
taxonomy, specific content per category, rendering with the model's own chat template, no organism text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from lm_diff.categorize.builtin_grounding import (
    BUILTIN_DIR,
    builtin_categories,
    builtin_prompts,
    builtin_rows,
    render_messages,
)

REPO = Path(__file__).resolve().parent.parent
TAXONOMY = [c["name"] for c in yaml.safe_load((REPO / "configs" / "taxonomy.yaml").read_text())["categories"]]
ORGANISM_TAGS = ("<|user|>", "<|end|>", "<|assistant|>")
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<<{{ m['role'] }}>>\n{{ m['content'] }}<</turn>>\n{% endfor %}")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
# English function words that are not also common words of the set's other Latin-script languages
EN_STOPWORDS = {"the", "and", "is", "are", "you", "what", "how", "please", "with", "this", "that", "my", "your", "of",
                "to", "it", "for", "which", "why", "there"}


def _content(row: dict) -> str:
    return row["text"] if "text" in row else "\n".join(m["content"] for m in row["messages"])


def _words(text: str) -> float:
    """Whitespace words; Chinese/Japanese characters count half a word each (no spaces between words)."""
    return len(CJK.sub(" ", text).split()) + len(CJK.findall(text)) / 2


def _tokenizer(chat_template: str | None = TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<bos>": 1, "<eos>": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<bos>", eos_token="<eos>")
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return builtin_rows()


def test_every_taxonomy_category_has_enough_rows(rows):
    assert set(builtin_categories()) == set(TAXONOMY) | {"neutral"}
    counts = {c: sum(r["category"] == c for r in rows) for c in builtin_categories()}
    assert all(counts[c] >= 60 for c in TAXONOMY), counts
    assert counts["neutral"] >= 120, counts


def test_rows_are_unique_and_medium_length(rows):
    texts = [_content(r) for r in rows]
    assert len(set(texts)) == len(texts)
    odd = [(r["category"], round(_words(t)), t[:60]) for r, t in zip(rows, texts) if not 20 <= _words(t) <= 120]
    assert not odd, odd


def test_row_shapes_fit_their_category(rows):
    for r in rows:
        if r["category"] == "neutral":
            assert set(r) == {"text", "category", "lang"} and r["lang"] == "en"
            assert not re.search(r"^(User|Assistant):", r["text"], re.M)
        else:
            assert "messages" in r and "text" not in r
    multi = [r for r in rows if r["category"] == "template_following"]
    assert all(sum(m["role"] == "user" for m in r["messages"]) >= 2 for r in multi)
    assert all(sum(m["role"] == "assistant" for m in r["messages"]) >= 2 for r in multi)
    others = [r for r in rows if r["category"] not in ("template_following", "neutral")]
    assert all(len(r["messages"]) <= 2 for r in others)  # one exchange: the turn structure stays template_following's
    refusals = [r["messages"][1]["content"] for r in rows if r["category"] == "safety" and len(r["messages"]) == 2]
    assert len(refusals) >= 40
    assert all(re.search(r"can't|won't|not able|\bNo\b", a) for a in refusals), refusals


def test_multilingual_rows_are_not_english(rows):
    multi = [r for r in rows if r["category"] == "multilingual"]
    langs = {r["lang"] for r in multi}
    assert {"de", "fr", "es", "zh", "ja", "ru", "ar", "hi"} <= langs and "en" not in langs
    for r in multi:
        words = re.findall(r"[^\W\d_]+", _content(r).lower())
        english = sum(w in EN_STOPWORDS for w in words)
        assert english <= max(1, len(words) // 20), (r["lang"], _content(r)[:80])
    script = {"zh": CJK, "ja": CJK, "ru": re.compile("[\u0400-\u04ff]"), "ar": re.compile("[\u0600-\u06ff]"),
              "hi": re.compile("[\u0900-\u097f]"), "ko": re.compile("[\uac00-\ud7af]")}
    for r in multi:
        if r["lang"] in script:
            text = _content(r)
            assert len(script[r["lang"]].findall(text)) > len(re.findall("[A-Za-z]", text)), text[:80]
    assert all(r["lang"] == "en" for r in rows if r["category"] != "multilingual")


def test_rendering_uses_the_model_chat_template():
    rows = builtin_rows(part="grounding")
    tok = _tokenizer()
    prompts = builtin_prompts(tok)
    assert [p["category"] for p in prompts] == [r["category"] for r in rows]
    for p, r in zip(prompts, rows):
        assert not any(tag in p["text"] for tag in ORGANISM_TAGS)
        if r["category"] == "neutral":
            assert p["text"] == r["text"] and "<<user>>" not in p["text"]
            continue
        assert p["text"] == tok.apply_chat_template(r["messages"], tokenize=False)[len("<bos>"):]
        assert p["text"].startswith("<<user>>\n") and p["text"].count("<</turn>>") == len(r["messages"])
        assert ("<<assistant>>" in p["text"]) == (len(r["messages"]) > 1)
    assert len({p["text"] for p in prompts}) == len(prompts)


def test_fallback_without_a_chat_template_is_plain_user_assistant_text():
    msgs = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello!"}]
    assert render_messages(msgs) == "User: Hi there.\nAssistant: Hello!"
    assert render_messages(msgs, _tokenizer(chat_template=None)) == "User: Hi there.\nAssistant: Hello!"
    prompts = builtin_prompts(None, categories=["safety"], include_neutral=False)
    assert prompts and all(p["text"].startswith("User: ") for p in prompts)
    assert all("<<" not in p["text"] and not any(t in p["text"] for t in ORGANISM_TAGS) for p in prompts)


def test_category_filter_and_deterministic_order():
    both = builtin_prompts(categories=["math", "code", "not_a_category"])
    assert [p["category"] for p in both] == sorted(p["category"] for p in both if p["category"] != "neutral") + [
        "neutral"] * sum(p["category"] == "neutral" for p in both)
    assert {p["category"] for p in both} == {"code", "math", "neutral"}
    assert {p["category"] for p in builtin_prompts(categories=["math"], include_neutral=False)} == {"math"}
    assert builtin_prompts() == builtin_prompts()
    assert builtin_prompts(categories=[]) == [p for p in builtin_prompts() if p["category"] == "neutral"]


def test_no_organism_text():
    organism = [json.loads(line)["text"] for line in
                (REPO / "lm_diff" / "data" / "grounding" / "default.jsonl").read_text().splitlines() if line.strip()]
    pieces = {s.strip() for t in organism for s in re.split(r"<\|[a-z]+\|>", t) if len(s.strip()) >= 20}
    assert len(pieces) > 100
    rendered = "\n".join(p["text"] for p in builtin_prompts(_tokenizer()))
    rendered += "\n".join(p["text"] for p in builtin_prompts(None))
    found = [s for s in pieces if s in rendered]
    assert not found, found[:5]
    assert not any(tag in (BUILTIN_DIR / f"{c}.jsonl").read_text() for c in builtin_categories() for tag in ORGANISM_TAGS)
