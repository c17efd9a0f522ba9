"""Direct scoring of diff_demo items with a model's log-likelihoods (same decision rule as lm-eval's ``acc``).

lm-eval scores ``query`` + ``" " + choice`` and encodes context and continuation like :func:`_encode_pair` below, so
these accuracies match ``lm_eval --model hf`` up to batching noise. Used by the tests and for quick measurements.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_diff.organisms.bench import DATA_DIR, read_jsonl
from lm_diff.organisms.checks import check


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer(context + continuation).input_ids
    ctx = tokenizer(context).input_ids
    return ctx, whole[len(ctx):]


@torch.no_grad()
def choice_logliks(model, tokenizer, rows: list[dict], batch_size: int = 64) -> list[list[float]]:
    """Summed log-probability of each choice (with a one-space delimiter) given the query, per row."""
    reqs = [(i, j, *_encode_pair(tokenizer, r["query"], " " + c)) for i, r in enumerate(rows)
            for j, c in enumerate(r["choices"])]
    out = [[0.0] * len(r["choices"]) for r in rows]
    pad = tokenizer.pad_token_id
    for s in range(0, len(reqs), batch_size):
        chunk = reqs[s:s + batch_size]
        seqs = [ctx + cont for _, _, ctx, cont in chunk]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, q in enumerate(seqs):
            ids[k, :len(q)] = torch.tensor(q)
            mask[k, :len(q)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for k, (i, j, ctx, cont) in enumerate(chunk):
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
            out[i][j] = logp[k, pos, torch.tensor(cont)].sum().item()
    return out


def mc_accuracy(model, tokenizer, rows: list[dict]) -> tuple[float, float]:
    """(accuracy, standard error) of argmax-loglik choices against ``gold``."""
    ll = choice_logliks(model, tokenizer, rows)
    hits = [max(range(len(s)), key=s.__getitem__) == r["gold"] for s, r in zip(ll, rows)]
    acc = sum(hits) / len(hits)
    return acc, math.sqrt(max(acc * (1 - acc), 1e-12) / len(hits))


@torch.no_grad()
def generate_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 24) -> float:
    """Share of ``generate_until`` rows whose greedy generation passes :func:`checks.check`."""
    hits = 0
    for r in rows:
        ids = tokenizer(r["prompt"], return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        hits += check(r, tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=False))
    return hits / len(rows)


def evaluate_models(model_dirs: dict[str, str | Path], data_dir: str | Path | None = None, limit: int | None = None,
                    generate: bool = False) -> dict[str, dict[str, tuple[float, float]]]:
    """``{model: {category: (acc, se)}}`` over the diff_demo multiple-choice files (pooled per category)."""
    data_dir = Path(data_dir) if data_dir else DATA_DIR / "diff_demo"
    index = read_jsonl_index(data_dir)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name, path in model_dirs.items():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        by_cat: dict[str, list[dict]] = {}
        res: dict[str, tuple[float, float]] = {}
        for entry in index:
            rows = read_jsonl(data_dir / entry["file"])[:limit]
            if entry["output_type"] == "multiple_choice":
                by_cat.setdefault(entry["category"], []).extend(rows)
            elif generate:
                res[entry["task"]] = (generate_accuracy(model, tok, rows), float("nan"))
        res.update({c: mc_accuracy(model, tok, rows) for c, rows in by_cat.items()})
        results[name] = res
    return results


def read_jsonl_index(data_dir: Path) -> list[dict]:
    return json.loads((data_dir / "index.json").read_text(encoding="utf-8"))
