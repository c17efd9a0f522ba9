"""Regression rules for ``lm-diff ci --fail-on RULE``.

Grammar: ``TARGET[.FIELD] OP NUMBER`` with OP one of ``<``, ``<=``, ``>``, ``>=``. A rule **fails** (exit 1) when its
condition holds, e.g. ``safety<-2.0`` fails when the safety score gap is below −2 points.

- TARGET: a category name, ``overall``, or a task name.
- FIELD (default ``delta``): ``delta``, ``ci_low``, ``ci_high``, ``p_value`` (score gap, points), ``latent_shift`` /
  ``share_ratio`` (R − 1, e.g. −0.5 = half the share), ``count_ratio``, ``shift_ci_low``, ``shift_ci_high``,
  ``q_value`` (latent shift, BH over all categories), ``q_linked`` (BH over the categories whose score moved), ``causal`` (fraction of the gap explained), ``exposure`` (S exposure).
  Categories only: ``perplexity``, ``perplexity_ci_low``, ``perplexity_ci_high``, ``perplexity_p_value``: the
  category's perplexity-probe gap (``categories[].perplexity_gap``), B − A log-likelihood per byte in nats/byte as the
  report stores it (positive = the fine-tune reads the category's held-out text better, i.e. at lower perplexity), so
  ``safety.perplexity<-0.05`` fails when the fine-tune lost more than 0.05 nats/byte on held-out safety text. A probe
  task's own gap is its task row: ``diff_probe_safety<-0.05``.
  Categories only: ``latent_change`` (the latent headline's enrichment, R − 1, docs/method.md#category-change),
  ``change_ci_low`` (its one-sided interval's lower end), ``change_q``: ``safety.change_q<0.05`` fails when the
  fine-tune changed safety's latents (either way) at q < 0.05, a gate for "nothing should touch this category".
A value that is unavailable (e.g. a NaN CI, or a category no perplexity probe scored) fails the rule, so a gate never
passes silently.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import Any, Optional

from lm_diff.errors import UserError

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SCORE_FIELDS = {"delta": "delta", "ci_low": "ci_low", "ci_high": "ci_high", "p_value": "p_value"}
SHIFT_FIELDS = {"latent_shift": "share_ratio", "share_ratio": "share_ratio", "count_ratio": "count_ratio",
                "shift_ci_low": "ci_low", "shift_ci_high": "ci_high", "q_value": "q_value", "q_linked": "q_linked"}
PERPLEXITY_FIELDS = {"perplexity": "delta", "perplexity_ci_low": "ci_low", "perplexity_ci_high": "ci_high",
                     "perplexity_p_value": "p_value"}
CHANGE_FIELDS = {"latent_change": "ratio", "change_ci_low": "ci_low", "change_q": "q"}
OTHER_FIELDS = {"causal", "exposure"}
FIELDS = sorted([*SCORE_FIELDS, *SHIFT_FIELDS, *PERPLEXITY_FIELDS, *CHANGE_FIELDS, *OTHER_FIELDS])
_RULE = re.compile(r"^\s*(?P<lhs>[^<>=\s]+)\s*(?P<op><=|>=|<|>)\s*(?P<num>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")
_EXAMPLES = ("e.g. 'safety<-2.0', 'overall<0', 'code.ci_high<0', 'safety.latent_shift<-0.5', "
             "'safety.perplexity<-0.05'")


@dataclass(frozen=True)
class Rule:
    text: str
    target: str
    field: str
    op: str
    threshold: float


@dataclass
class RuleResult:
    rule: Rule
    value: Optional[float]
    failed: bool
    note: str = ""

    @property
    def decimals(self) -> int:
        """Decimals to print the value with: 4 for a perplexity gap (nats/byte gaps are often below 0.01), else 3."""
        return 4 if self.rule.field in PERPLEXITY_FIELDS else 3


def parse_rule(text: str) -> Rule:
    """Parse one rule; a malformed rule raises one UserError with the grammar and examples."""
    m = _RULE.match(text or "")
    if not m:
        raise UserError(f"--fail-on {text!r}: expected TARGET[.FIELD] OP NUMBER with OP in <, <=, >, >= ({_EXAMPLES})")
    lhs = m["lhs"]
    target, field = lhs, "delta"
    if "." in lhs:
        head, tail = lhs.rsplit(".", 1)
        if tail in FIELDS:
            target, field = head, tail
        else:
            close = difflib.get_close_matches(tail, FIELDS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"--fail-on {text!r}: unknown field {tail!r}{hint} (fields: {', '.join(FIELDS)})")
    if not target:
        raise UserError(f"--fail-on {text!r}: missing the category, task or 'overall' before the operator ({_EXAMPLES})")
    return Rule(text=text.strip(), target=target, field=field, op=m["op"], threshold=float(m["num"]))


def _num(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def rule_value(rule: Rule, report: dict) -> tuple[Optional[float], str]:
    """The value a rule tests, and a note when it is unavailable. Unknown targets raise UserError."""
    cats = {c["name"]: c for c in report.get("categories") or []}
    tasks = {t["name"]: t for t in report.get("tasks") or []}
    if rule.target == "overall":
        if rule.field not in SCORE_FIELDS:
            raise UserError(f"--fail-on {rule.text!r}: 'overall' has only score-gap fields ({', '.join(SCORE_FIELDS)})")
        o = report.get("overall") or {}
        v = _num(o.get(SCORE_FIELDS[rule.field]))
        return v, "" if v is not None else "no overall score gap"
    if rule.target in cats:
        c = cats[rule.target]
        if rule.field in SCORE_FIELDS:
            g = c.get("score_gap")
            if not g:
                return None, f"no benchmark task is mapped to category {rule.target}"
            v = _num(g.get(SCORE_FIELDS[rule.field]))
        elif rule.field in PERPLEXITY_FIELDS:
            pg = c.get("perplexity_gap")
            if not pg:
                return None, (f"no perplexity probe scored category {rule.target} (add diff_probes, or the organisms' "
                              f"probe group, to the benchmark tasks)")
            v = _num(pg.get(PERPLEXITY_FIELDS[rule.field]))
        elif rule.field in SHIFT_FIELDS or rule.field in CHANGE_FIELDS:
            ls = c.get("latent_shift") if rule.field in SHIFT_FIELDS else c.get("latent_change")
            if not ls:
                if not (report.get("quality") or {}).get("available"):
                    raise UserError(f"--fail-on {rule.text!r}: latent fields need crosscoder artifacts; pass --diff RUN_DIR")
                return None, (f"no latent {'shift' if rule.field in SHIFT_FIELDS else 'change'} for category "
                              f"{rule.target}")
            v = _num(ls.get({**SHIFT_FIELDS, **CHANGE_FIELDS}[rule.field]))
        elif rule.field == "causal":
            v = _num((c.get("causal") or {}).get("fraction"))
        else:
            v = _num((c.get("exposure") or {}).get("S"))
        return v, "" if v is not None else f"{rule.field} unavailable for {rule.target}"
    if rule.target in tasks:
        if rule.field not in SCORE_FIELDS:
            raise UserError(f"--fail-on {rule.text!r}: tasks have only score-gap fields ({', '.join(SCORE_FIELDS)})")
        v = _num(tasks[rule.target].get(SCORE_FIELDS[rule.field]))
        return v, "" if v is not None else f"{rule.field} unavailable for task {rule.target}"
    names = ["overall", *cats, *tasks]
    close = difflib.get_close_matches(rule.target, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(f"--fail-on {rule.text!r}: {rule.target!r} is not a category, task or 'overall' in this report{hint} "
                    f"(available: {', '.join(names[:15])})")


def evaluate_rules(rules: list[str] | list[Rule], report: dict) -> list[RuleResult]:
    """Parse (if needed) and evaluate every rule against the report. All rules are parsed before any is evaluated."""
    parsed = [r if isinstance(r, Rule) else parse_rule(r) for r in rules]
    out = []
    for r in parsed:
        v, note = rule_value(r, report)
        failed = True if v is None else bool(OPS[r.op](v, r.threshold))
        out.append(RuleResult(r, v, failed, note))
    return out
