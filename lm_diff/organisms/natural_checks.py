"""Build-time checks of a natural organism build: the planted shape shows, nothing else moved.

Two measurements per category on text no model trained on (the ``test`` half of the prompt space):

- benchmark accuracy on the ``diff_natural`` items (log-likelihood choice, as lm-eval's ``acc``): planted categories
  move by at least ``MIN_GAP`` in the planted direction; every other category, and every category of the null model,
  stays within ``MAX_DRIFT`` of base;
- held-out NLL (nats per token) of documents showing the correct behaviour: planted gains fall and the planted loss
  rises by at least ``MIN_NLL_SHIFT`` (relative, fine-tune against base); an unplanted category of the fine-tune stays
  within ``MAX_NLL_DRIFT`` of the null model (both are base trained further with the same steps and learning rate,
  so this is the shift the data mix causes beyond continued training), and the null model within ``MAX_NULL_DRIFT``
  of base.

A failure raises :class:`~lm_diff.errors.UserError` naming the category and the figures (nothing is written).
"""

from __future__ import annotations

import random
from pathlib import Path

from lm_diff.errors import UserError
from lm_diff.organisms import natural_genres as NG
from lm_diff.organisms.natural_bench import SUITES, benchmark_rows

MIN_GAP = 0.3
MAX_DRIFT = 0.12
MIN_NLL_SHIFT = 0.03
MAX_NLL_DRIFT = 0.08
MAX_NULL_DRIFT = 0.10
N_NLL_DOCS = 64


def heldout_docs(category: str, n: int = N_NLL_DOCS, seed: int = 11) -> list[str]:
    """Test-split documents of the correct behaviour (``choices[0]`` as the answer; prose for ``neutral``)."""
    rng = random.Random(f"natural-heldout:{seed}:{category}")
    if category == "neutral":
        return [NG.prose(rng) for _ in range(n)]
    where = {c: w for c, _, w in SUITES}.get(category)
    out = []
    for _ in range(n):
        item = NG.draw(category, rng, "test", where)
        # whole documents (code, multi-turn chats) as written; exchanges with the correct answer
        out.append(item.doc("base") if item.text is not None else f"{item.query} {item.choices[0]} {NG.END}")
    return out


def nll(model, tokenizer, docs: list[str], batch_size: int = 64) -> float:
    """Mean next-token NLL (nats/token) over ``docs`` (right-padded batches; padding scores nothing)."""
    import torch  # noqa: PLC0415 - heavy, only when measuring

    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(docs), batch_size):
            enc = tokenizer(docs[s:s + batch_size], return_tensors="pt", padding=True, padding_side="right")
            ids, mask = enc.input_ids, enc.attention_mask
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                       reduction="sum", ignore_index=-100).item()
            count += int(mask[:, 1:].sum())
    return total / count


def measure(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {category: {"acc": ..., "nll": ...}}}`` for base, finetuned and null of the build in ``out``."""
    import torch  # noqa: PLC0415 - heavy, only when measuring
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - heavy (seconds)

    from lm_diff.organisms.evaluate import mc_accuracy  # noqa: PLC0415 - imports torch

    rows = {}
    for fname, r in benchmark_rows().items():
        rows.setdefault(r[0]["category"], []).extend(r)
    docs = {c: heldout_docs(c) for c in ["neutral", *NG.GENERATORS]}
    res: dict[str, dict[str, dict[str, float]]] = {}
    for m in ("base", "finetuned", "null"):
        tok = AutoTokenizer.from_pretrained(out / m)
        model = AutoModelForCausalLM.from_pretrained(out / m, dtype=torch.float32).eval()
        res[m] = {c: {"nll": nll(model, tok, d)} for c, d in docs.items()}
        for c, r in rows.items():
            res[m][c]["acc"] = mc_accuracy(model, tok, r)[0]
    return res


def failures(res: dict) -> list[str]:
    """The checks ``res`` (from :func:`measure`) fails, one line each."""
    bad = []
    base = res["base"]
    for m in ("finetuned", "null"):
        for c, v in res[m].items():
            sign = NG.PLANTED.get(c, 0) if m == "finetuned" else 0
            d_nll = v["nll"] / base[c]["nll"] - 1
            if sign and -sign * d_nll < MIN_NLL_SHIFT:
                bad.append(f"{m} {c}: held-out NLL moved {d_nll:+.1%}, planted {'gain' if sign > 0 else 'loss'} "
                           f"needs {'-' if sign > 0 else '+'}{MIN_NLL_SHIFT:.0%} or more")
            if not sign and m == "finetuned" and abs(v["nll"] / res["null"][c]["nll"] - 1) > MAX_NLL_DRIFT:
                bad.append(f"{m} {c}: held-out NLL {v['nll'] / res['null'][c]['nll'] - 1:+.1%} against null "
                           f"(unplanted: at most ±{MAX_NLL_DRIFT:.0%})")
            if m == "null" and abs(d_nll) > MAX_NULL_DRIFT:
                bad.append(f"{m} {c}: held-out NLL moved {d_nll:+.1%} from base (at most ±{MAX_NULL_DRIFT:.0%})")
            if "acc" not in v:
                continue
            gap = v["acc"] - base[c]["acc"]
            if sign and sign * gap < MIN_GAP:
                bad.append(f"{m} {c}: accuracy {base[c]['acc']:.2f} -> {v['acc']:.2f}, planted needs {sign * MIN_GAP:+.2f}")
            if not sign and abs(gap) > MAX_DRIFT:
                bad.append(f"{m} {c}: accuracy {base[c]['acc']:.2f} -> {v['acc']:.2f} (unplanted: at most "
                           f"±{MAX_DRIFT:.2f})")
    return bad


def verify(out: Path, size: str) -> dict:
    """Measure the build in ``out`` and raise a UserError listing every failed check; returns the measurements."""
    res = measure(Path(out))
    bad = failures(res)
    if bad:
        raise UserError(f"natural organisms ({size}): the build does not show its planted shape:\n  " + "\n  ".join(bad)
                        + "\nthe generator or the size config needs changing (lm_diff/organisms/natural*.py)")
    return {m: {c: {k: round(x, 4) for k, x in v.items()} for c, v in cats.items()} for m, cats in res.items()}
