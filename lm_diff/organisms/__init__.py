"""Model organisms: small model pairs built offline with planted, known capability differences.

``build(size)`` trains a byte-level BPE tokenizer and three Llama-style models from generated text, one genre per
taxonomy category: ``base`` (from scratch), ``finetuned`` (base + a shifted mix: refusals, format instructions
followed, the invented language Velin, corrupted code) and ``null`` (base + more of the base mix). The planted shape is
recorded in ``organism.json`` (``planted: {category: +1 | -1 | 0}``) and measured by the ``diff_demo`` benchmark
(:mod:`.bench`), whose items are disjoint from all training text.

A second family, ``natural`` (:mod:`.natural`), is a tiny Qwen2 on real-language text fine-tuned in full on a shifted
mix (math+, hallucination+, structured_output-), scored by ``diff_natural``; its models are
``organisms://natural/<model>`` and ``organisms://natural-tiny/<model>``, its corpora ``organisms:natural/<genre>``.
"""

from __future__ import annotations

import random

from lm_diff.errors import UserError
from lm_diff.organisms import genres as G
from lm_diff.organisms import natural, natural_bench
from lm_diff.organisms.bench import grounding_prompts, write_benchmarks, write_grounding
from lm_diff.organisms.build import BASE_MIX, FT_MIX, MODELS, SIZES, build, organism_dir
from lm_diff.organisms.build import resolve_spec as _resolve_demo_spec
from lm_diff.organisms.checks import check
from lm_diff.organisms.genres import GENERATORS, PLANTED

CATEGORIES = list(GENERATORS)

__all__ = ["build", "organism_dir", "resolve_spec", "corpus_docs", "grounding_prompts", "check", "CATEGORIES",
           "PLANTED", "SIZES", "MODELS", "write_benchmarks", "write_grounding", "is_natural_spec",
           "natural_grounding_prompts"]

is_natural_spec = natural.is_natural_spec
natural_grounding_prompts = natural_bench.grounding_prompts


def resolve_spec(spec: str):
    """``organisms://<size>/<model>`` (demo family) or ``organisms://natural[-tiny]/<model>`` -> model directory."""
    if natural.is_natural_spec(spec):
        return natural.resolve_spec(spec)
    return _resolve_demo_spec(spec)


def corpus_docs(genre: str, n_docs: int, seed: int) -> list[str]:
    """``n_docs`` generated documents of ``genre`` for a capture corpus (``neutral``, a category name, ``mix`` or
    ``finetune``).

    Documents come from the training half of the prompt space (never a benchmark item) and alternate between the base
    and the fine-tune behaviour, so both models' characteristic answers are present. ``mix`` samples genres with the
    base-mix weights plus Velin. ``finetune`` is the fine-tune's own chat data: genres drawn with the fine-tune's mix
    weights, every answer as the fine-tune gives it (the organisms' counterpart of capturing on a chat model's
    transcripts, where its new behaviour is frequent enough for a dictionary to give it latents).
    """
    if genre.startswith("natural/"):
        return natural_bench.corpus_docs(genre[len("natural/"):], n_docs, seed)
    if genre not in ("mix", "finetune", "neutral") and genre not in G.GENERATORS:
        raise UserError(f"unknown organism genre {genre!r}; use neutral, mix, finetune or one of "
                        f"{', '.join(G.GENERATORS)} (natural family: natural/<genre>)")
    rng = random.Random(f"corpus:{genre}:{seed}")
    out: list[str] = []
    for i in range(n_docs):
        g = genre
        if genre == "mix":
            names = list(BASE_MIX)
            g = rng.choices(names, [BASE_MIX[n] + FT_MIX[n] for n in names])[0]
        elif genre == "finetune":
            names = [n for n in FT_MIX if FT_MIX[n] > 0]
            g = rng.choices(names, [FT_MIX[n] for n in names])[0]
        variant = "ft" if (g == "multilingual" or genre == "finetune" or i % 2) else "base"
        out.extend(G.docs(g, variant, 1, rng))
    return out
