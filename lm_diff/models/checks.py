"""Pair checks: refuse model sets that cannot share a crosscoder (see ``lm_diff.models``)."""

from __future__ import annotations

from typing import Any, Sequence

from lm_diff.errors import UserError
from lm_diff.models.layers import hidden_size, n_layers

# ----------------------------------------------------------------------------------------------------------------------
# Pair checks


def _name(model: Any, i: int) -> str:
    label = "ABCDEFGH"[i] if i < 8 else str(i)
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    return f"{label} ({path})" if path else label


_SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token")
_PROBE = "Hello world! 123 <b>lm_diff</b>\n\tnaïve café — 東京"


def _tokenizer_differences(a: Any, b: Any) -> list[str]:
    diffs = []
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))
        only_b = sorted(set(vb) - set(va))
        moved = sum(1 for t in set(va) & set(vb) if va[t] != vb[t])
        detail = [f"{len(va)} vs {len(vb)} tokens"]
        if only_a:
            detail.append(f"{len(only_a)} only in the first, e.g. {only_a[0]!r}")
        if only_b:
            detail.append(f"{len(only_b)} only in the second, e.g. {only_b[0]!r}")
        if moved:
            detail.append(f"{moved} shared tokens with different ids")
        diffs.append("vocabulary differs (" + "; ".join(detail) + ")")
    for attr in _SPECIAL_ATTRS:
        ta, tb = getattr(a, attr, None), getattr(b, attr, None)
        ia, ib = getattr(a, attr + "_id", None), getattr(b, attr + "_id", None)
        if (str(ta), ia) != (str(tb), ib):
            diffs.append(f"special token {attr} differs ({ta!r}={ia} vs {tb!r}={ib})")
    sa, sb = sorted(map(str, a.all_special_tokens)), sorted(map(str, b.all_special_tokens))
    if sa != sb and not any("special token" in d for d in diffs):
        diffs.append(f"special tokens differ ({sorted(set(sa) ^ set(sb))[:5]})")
    if not diffs:
        ea, eb = a(_PROBE)["input_ids"], b(_PROBE)["input_ids"]
        if list(ea) != list(eb):
            diffs.append("the same text encodes to different token ids (normaliser, pre-tokeniser or BOS handling differs)")
    return diffs


def check_pair(*args: Any, names: Sequence[str] | None = None) -> None:
    """Refuse model sets that cannot be diffed with one crosscoder.

    Call as ``check_pair(tokenizers, models)`` (two lists, any length >= 2) or ``check_pair(tokA, tokB, modelA, modelB)``.
    Raises one ``UserError`` that names every difference (tokenizer vocabulary / special tokens / encodings, hidden
    size, layer count) and the fix.
    """
    if len(args) == 2:
        tokenizers, models = list(args[0]), list(args[1])
    elif len(args) == 4:
        tokenizers, models = [args[0], args[1]], [args[2], args[3]]
    else:
        raise TypeError("check_pair(tokenizers, models) or check_pair(tokA, tokB, modelA, modelB)")
    if len(tokenizers) != len(models):
        raise TypeError("check_pair: need one tokenizer per model")
    labels = list(names) if names else [_name(m, i) for i, m in enumerate(models)]
    problems = []
    for i in range(1, len(models)):
        pair = f"{labels[0]} and {labels[i]}"
        tdiff = _tokenizer_differences(tokenizers[0], tokenizers[i])
        if tdiff:
            problems.append(f"{pair} use different tokenizers: " + "; ".join(tdiff))
        d0, di = hidden_size(models[0]), hidden_size(models[i])
        if d0 != di:
            problems.append(f"{pair} have different hidden sizes ({d0} vs {di})")
        l0, li = n_layers(models[0]), n_layers(models[i])
        if l0 != li:
            problems.append(f"{pair} have different numbers of decoder layers ({l0} vs {li})")
    if problems:
        raise UserError(
            "cannot diff these models: " + ". ".join(problems) + ". A crosscoder needs identical token ids and "
            "residual streams of the same shape: compare a fine-tune with the base model it was trained from (same "
            "tokenizer files, same architecture size), or use design: anchored with an anchor of the same family."
        )


# The models of a run

