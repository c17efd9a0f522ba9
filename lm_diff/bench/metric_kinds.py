"""How each lm-eval metric is read per item, which direction is better, and whether a per-item paired test is valid.

lm-eval (0.4.13) logs one value per document and metric in ``samples_<task>.jsonl`` and reduces them with the
metric's aggregation (``lm_eval.api.metrics``). ``METRIC_KINDS`` maps every metric name lm-eval logs per item to a
:class:`MetricKind` that says how one logged value becomes a per-item ``(value, weight)``:

- the task's score is ``aggregate(weighted mean of values)``, which reproduces lm-eval's own number;
- the paired comparison is on the weighted mean of the per-item values (the *quantity*, stated in the output), so a
  corpus-level metric such as word perplexity, ``exp(-Σ loglik / Σ words)``, is compared as log-likelihood per word
  (nats/word, higher is better): a fine-tune whose perplexity falls 4.79 → 3.35 gains +0.36 nats/word;
- metrics that do not decompose over documents (F1, MCC, BLEU, chrF, TER, acc_all) get lm-eval's corpus score for
  each model and their difference, without a per-item test (``paired=False``).

Unknown metric names are accepted only when the task's ``metric_list`` aggregates them with ``mean`` and the logged
values are numbers (custom ``process_results`` metrics); anything else is refused with a ``UserError`` naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from lm_eval.api import metrics as lm_metrics

from lm_diff.errors import UserError

_LN2 = math.log(2)


@dataclass(frozen=True)
class MetricKind:
    """One way lm-eval logs and aggregates a metric."""

    name: str
    """Kind id (e.g. ``mean``, ``word_perplexity``)."""
    quantity: str
    """What the paired comparison is on (shown in the score table)."""
    unit: str
    """Unit of the compared quantity: ``points`` (×100 of a [0, 1] value), ``nats/word``, ``bits/byte``, ..."""
    higher_is_better: bool
    """Direction of the compared per-item quantity (not of lm-eval's aggregate)."""
    paired: bool
    """True when the task score is a (weighted) mean of per-item values, so a paired per-document test is valid."""
    read: Callable[[Any], tuple[float, float]]
    """Logged per-item value → (value, weight). Only for ``paired`` kinds."""
    aggregate: Callable[[float], float]
    """Weighted mean of the values → lm-eval's reported score (identity for means)."""
    scale: float = 100.0
    """Multiplier from the quantity to its unit (100 for points)."""
    corpus: Optional[Callable[[list], float]] = None
    """For ``paired=False`` kinds: lm-eval's aggregation over the logged per-item values."""


def _number(v: Any) -> float:
    if isinstance(v, (bool, int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {v!r}")


def _pair(v: Any) -> tuple[float, float]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return _number(v[0]), _number(v[1])
    raise ValueError(f"expected [loglikelihood, count], got {v!r}")


def _read_scalar(v: Any) -> tuple[float, float]:
    return _number(v), 1.0


def _read_per_unit(v: Any) -> tuple[float, float]:
    ll, n = _pair(v)
    if n <= 0:
        raise ValueError(f"word/byte count must be positive, got {v!r}")
    return ll / n, n


def _read_bits_per_byte(v: Any) -> tuple[float, float]:
    ll, n = _pair(v)
    if n <= 0:
        raise ValueError(f"byte count must be positive, got {v!r}")
    return -ll / (n * _LN2), n


def _read_list(v: Any) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"expected a non-empty list of per-instruction results, got {v!r}")
    xs = [_number(x) for x in v]
    return sum(xs) / len(xs), float(len(xs))


def _read_brier(v: Any) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"expected [gold, probabilities], got {v!r}")
    gold, probs = int(v[0]), np.asarray(v[1], dtype=float)
    onehot = np.zeros_like(probs)
    onehot[gold] = 1.0
    return float(((probs - onehot) ** 2).sum()), 1.0


def _ident(x: float) -> float:
    return x


def _exp_neg(x: float) -> float:
    return math.exp(-x)


def _mean_kind(name: str, quantity: str) -> MetricKind:
    return MetricKind(name, quantity, "points", True, True, _read_scalar, _ident)


def _corpus_kind(name: str, fn: Callable[[list], float], hib: bool, scale: float, unit: str) -> MetricKind:
    return MetricKind(name, f"corpus-level {name} (lm-eval's aggregation; no per-item test)", unit, hib, False,
                      _read_scalar, _ident, scale=scale, corpus=fn)


MEAN = _mean_kind("mean", "per-item score (lm-eval's mean)")
_F1 = _corpus_kind("f1", lm_metrics.f1_score, True, 100.0, "points")
_MCC = _corpus_kind("mcc", lm_metrics.matthews_corrcoef, True, 100.0, "points")

METRIC_KINDS: dict[str, MetricKind] = {
    **{m: MEAN for m in ("acc", "acc_norm", "acc_mutual_info", "acc_bytes", "exact_match", "pass@1", "pass_at_1",
                         "pass_at_k", "prompt_level_strict_acc", "prompt_level_loose_acc")},
    "perplexity": MetricKind("perplexity", "log-likelihood of the target (nats; lm-eval's perplexity = exp(−mean))",
                             "nats", True, True, _read_scalar, _exp_neg, scale=1.0),
    "word_perplexity": MetricKind(
        "word_perplexity", "log-likelihood per word (nats/word; lm-eval's word_perplexity = exp(−mean))",
        "nats/word", True, True, _read_per_unit, _exp_neg, scale=1.0),
    "byte_perplexity": MetricKind(
        "byte_perplexity", "log-likelihood per byte (nats/byte; lm-eval's byte_perplexity = exp(−mean))",
        "nats/byte", True, True, _read_per_unit, _exp_neg, scale=1.0),
    "bits_per_byte": MetricKind("bits_per_byte", "bits per byte (−log2-likelihood per byte, as lm-eval)", "bits/byte",
                                False, True, _read_bits_per_byte, _ident, scale=1.0),
    "inst_level_strict_acc": MetricKind("inst_level", "instructions followed (pooled over instructions, as lm-eval)",
                                        "points", True, True, _read_list, _ident),
    "inst_level_loose_acc": MetricKind("inst_level", "instructions followed (pooled over instructions, as lm-eval)",
                                       "points", True, True, _read_list, _ident),
    "brier_score": MetricKind("brier_score", "Brier score of the choice probabilities (lower is better)", "points",
                              False, True, _read_brier, _ident),
    "f1": _F1,
    "mcc": _MCC,
    "matthews_corrcoef": _MCC,
    "bleu": _corpus_kind("bleu", lm_metrics.bleu, True, 1.0, "BLEU"),
    "chrf": _corpus_kind("chrf", lm_metrics.chrf, True, 1.0, "chrF"),
    "chrf++": _corpus_kind("chrf++", lm_metrics.chrfpp, True, 1.0, "chrF++"),
    "ter": _corpus_kind("ter", lm_metrics.ter, False, 1.0, "TER"),
    "acc_all": _corpus_kind("acc_all", lm_metrics.acc_all, True, 100.0, "points"),
}
"""Metric name (as logged in samples) → kind. Names matching ``pass@<k>``/``pass_at_<k>`` are ``MEAN`` too."""

_MEAN_AGGREGATIONS = {"mean", "nanmean"}


def _declared_aggregation(config: Optional[dict], metric: str) -> Optional[str]:
    for m in (config or {}).get("metric_list") or []:
        if isinstance(m, dict) and str(m.get("metric")) == metric:
            agg = m.get("aggregation")
            return agg if isinstance(agg, str) else None
    return None


def metric_kind(task: str, metric: str, config: Optional[dict] = None, example: Any = None) -> MetricKind:
    """The :class:`MetricKind` of ``metric`` in ``task``; a ``UserError`` naming the metric when it is unknown.

    ``config`` is the task's entry in the results' ``configs`` (its ``metric_list`` declares custom metrics'
    aggregation); ``example`` is one logged per-item value.
    """
    kind = METRIC_KINDS.get(metric)
    if kind is not None:
        return kind
    if metric.startswith(("pass@", "pass_at_")):
        return MEAN
    agg = _declared_aggregation(config, metric)
    if agg in _MEAN_AGGREGATIONS and (example is None or isinstance(example, (bool, int, float))):
        return _mean_kind("mean", f"per-item {metric} (declared aggregation: {agg})")
    known = ", ".join(sorted(METRIC_KINDS))
    raise UserError(
        f"task {task}: metric {metric!r} (aggregation {agg or 'unknown'}) has no per-item reading in lm_diff; known "
        f"metrics: {known}, pass@k, and custom metrics whose metric_list aggregation is 'mean' with numeric per-item "
        "values. Give the task one of these metrics (first in its metric_list) or leave it out of the run"
    )


def read_values(kind: MetricKind, task: str, metric: str, logged: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item (values, weights) of a paired kind; a UserError naming the task and metric on a malformed value.

    Missing values (None) become NaN with weight 0.
    """
    vals, wts = np.full(len(logged), np.nan), np.zeros(len(logged))
    for i, v in enumerate(logged):
        if v is None:
            continue
        try:
            vals[i], wts[i] = kind.read(v)
        except (TypeError, ValueError, IndexError) as exc:
            raise UserError(f"task {task}: per-item {metric} value {i} cannot be read ({exc}); is this lm-eval "
                            "--log_samples output of the same lm-eval version?") from None
    return vals, wts


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Σ w v / Σ w over finite values (NaN for no weight)."""
    ok = np.isfinite(values) & (weights > 0)
    w = weights[ok].sum()
    return float((values[ok] * weights[ok]).sum() / w) if w > 0 else float("nan")


def lm_eval_score(kind: MetricKind, values: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None,
                  logged: Optional[list] = None) -> float:
    """lm-eval's aggregate for one model: from per-item (values, weights), or from the logged items (corpus kinds)."""
    if not kind.paired:
        return float(kind.corpus(list(logged or [])))
    return kind.aggregate(weighted_mean(values, weights))
