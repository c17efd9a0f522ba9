"""Regenerate the README's status tables from finished runs, so that every figure there has a command behind it.

    python -m lm_diff.dev.figures RUN_DIR [RUN_DIR ...] [--readme README.md]

Each RUN_DIR is the ``--out`` folder of ``lm-diff run`` (``report.json`` plus ``stages/*/DONE.json``); see
docs/report_schema.md for the keys read here. Without ``--readme`` the tables are printed. With it, the text between
``<!-- figures:NAME:begin -->`` and ``<!-- figures:NAME:end -->`` is replaced by table NAME (stamped with the command
and the run it came from) and everything outside the markers is left byte for byte as it was; a rerun on the same
runs changes nothing. The per-run tables (``categories``, ``tasks``, ``quality``, ``timings``) describe the first
RUN_DIR; ``runs`` has one row per RUN_DIR. ``make figures`` runs this on runs/demo and runs/demo-null when present.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lm_diff.dev.results import FILE_TABLES, SOURCES
from lm_diff.errors import UserError
from lm_diff.io import read_json, write_text

MARKER_RE = re.compile(r"<!-- figures:(?P<name>[A-Za-z0-9_-]+):(?P<edge>begin|end) -->")
# Stage kinds in pipeline order (a stage directory is KIND-HASH[-...]); kinds not listed sort after these.
STAGE_ORDER = ["eval", "capture", "train", "diff", "categorize", "link", "causal", "report"]
DASH = "–"  # an en dash: missing or undefined (negative numbers use the ASCII minus)


@dataclass
class Run:
    """One finished run directory: its report and the stages that produced it."""

    label: str
    """The directory as given on the command line (used in stamps and as the row name)."""
    report: dict
    """The parsed report.json."""
    stages: dict[str, dict] = field(default_factory=dict)
    """Stage directory name -> its DONE.json, for the stages of this run's report (see :func:`_run_stages`)."""
    keys: dict[str, Any] = field(default_factory=dict)
    """Stage directory name -> its KEY.json (empty when missing), for the same stages."""

    @property
    def alpha(self) -> float:
        conf = ((self.report.get("run") or {}).get("config") or {}).get("stats", {}).get("confidence", 0.95)
        return 1.0 - float(conf)


# ----------------------------------------------------------------------------------------------------------------------
# Reading runs


def _stage_refs(key: Any, names: set[str]) -> set[str]:
    """Stage directory names mentioned anywhere in a KEY.json value."""
    if isinstance(key, str):
        return {key} & names
    if isinstance(key, dict):
        return set().union(*(_stage_refs(v, names) for v in key.values())) if key else set()
    if isinstance(key, list):
        return set().union(*(_stage_refs(v, names) for v in key)) if key else set()
    return set()


def _run_stages(stages_dir: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    """The finished stages behind the newest result in ``stages_dir``.

    A run folder keeps the stages of earlier configs too (they are a cache). The stages of the current result are the
    newest finished stage that no other stage's KEY.json refers to, plus everything its KEY.json refers to, transitively.
    """
    done = {d.name: d for d in sorted(stages_dir.iterdir()) if (d / "DONE.json").is_file()} if stages_dir.is_dir() else {}
    if not done:
        return {}, {}
    names = set(done)
    keys = {n: read_json(d / "KEY.json") if (d / "KEY.json").is_file() else {} for n, d in done.items()}
    refs = {n: _stage_refs(keys[n], names - {n}) for n in done}
    referenced = set().union(*refs.values())
    roots = [n for n in done if n not in referenced]
    root = max(roots, key=lambda n: ((done[n] / "DONE.json").stat().st_mtime, n))
    keep, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo.extend(refs[n])
    return {n: read_json(done[n] / "DONE.json") for n in sorted(keep)}, {n: keys[n] for n in sorted(keep)}


def load_run(path: str) -> Run:
    """Read one run directory; a missing or unreadable report.json is a UserError that says how to produce one."""
    p = Path(path)
    report_path = p / "report.json"
    if not report_path.is_file():
        raise UserError(f"{path} has no report.json: finish a run there first (`make demo`, `make demo-null`, or "
                        f"`lm-diff run CONFIG --out {path}`).")
    try:
        report = read_json(report_path)
    except ValueError as e:
        raise UserError(f"{report_path} is not valid JSON ({e}); rerun the report stage to rewrite it.") from e
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("lm_diff.report"):
        raise UserError(f"{report_path} is not an lm_diff report (its 'schema' is not lm_diff.report...); "
                        f"pass the --out folder of `lm-diff run`.")
    stages, keys = _run_stages(p / "stages")
    return Run(label=path, report=report, stages=stages, keys=keys)


# ----------------------------------------------------------------------------------------------------------------------
# Number formats (None, NaN and missing keys print as a dash)


def _num(x: Any) -> Optional[float]:
    return None if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) else float(x)


def _pct(x: Any) -> str:
    """A ratio on the R − 1 scale as a signed percentage: 1.43 -> '+143 %'."""
    v = _num(x)
    return DASH if v is None else f"{round(100 * v) or 0:+d} %"  # `or 0`: no "-0 %"


def _g(x: Any, digits: int = 2) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.{digits}g}"


def _f(x: Any, fmt: str) -> str:
    v = _num(x)
    return DASH if v is None else format(v, fmt)


def _ci(lo: Any, hi: Any, fmt: Callable[[Any], str]) -> str:
    return "" if _num(lo) is None or _num(hi) is None else f" [{fmt(lo)}, {fmt(hi)}]"


def _sign(s: Any) -> str:
    return {1: "+", -1: "-", 0: "0"}.get(s, DASH)


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Tables


def _seeds(s: Optional[dict]) -> str:
    if not s or not s.get("n"):
        return DASH
    n, pos, neg = s["n"], s.get("positive", 0), s.get("negative", 0)
    return f"{n}/{n} +" if pos == n else f"{n}/{n} -" if neg == n else f"{pos} + / {neg} - of {n}"


def _causal(c: Optional[dict]) -> str:
    if not c or _num(c.get("fraction")) is None:
        return DASH
    return f"{_pct(c['fraction']).lstrip('+')} (random {_pct(c.get('random_fraction')).lstrip('+')})"


def table_categories(runs: list[Run]) -> str:
    """Per category of the first run: planted sign, the latent headline (what changed, either way), the direction (S vs
    T share ratio), benchmark gap, agreement and causal check."""
    rows = []
    for c in runs[0].report.get("categories") or []:
        ls, gap, lc = c.get("latent_shift") or {}, c.get("score_gap") or {}, c.get("latent_change") or {}
        changed = DASH if not lc else "insufficient" if lc.get("insufficient") else (
            _pct(lc.get("ratio")) + ("" if _num(lc.get("ci_low")) is None else f" [{_pct(lc['ci_low'])}, unbounded]"))
        n_s, n_t = _num(ls.get("n_S")), _num(ls.get("n_T"))
        counts = DASH if n_s is None or n_t is None else f"{n_s:.0f} / {n_t:.0f}"
        shift = _pct(ls.get("share_ratio")) + _ci(ls.get("ci_low"), ls.get("ci_high"), _pct)
        if ls.get("insufficient"):
            shift += " (insufficient)"
        delta = _f(gap.get("delta"), "+.1f") + _ci(gap.get("ci_low"), gap.get("ci_high"), lambda v: _f(v, "+.1f"))
        agree = {True: "agree", False: "disagree"}.get(c.get("agreement"), DASH)
        rows.append([c.get("name", "?"), _sign(c.get("planted_sign")), changed, _g(lc.get("q")),
                     DASH if not lc or lc.get("insufficient") else "none" if _num(lc.get("mds")) is None
                     else _pct(lc.get("mds")),
                     shift, _g(ls.get("q_value")), _g(ls.get("q_linked")), _mds(ls), counts,
                     _seeds(c.get("seed_signs")), delta, agree, _causal(c.get("causal"))])
    return md_table(["category", "planted", "changed, either way [CI]", "q (changed)", "detectable change",
                     "direction: share ratio S/T [CI]", "q (all)", "q linked", "detectable ↑ / ↓", "n_S / n_T",
                     "seeds", "Δscore [CI]", "sign", "causal: gap closed"], rows)


def _mds(ls: dict) -> str:
    """The minimum detectable share ratio up / down (docs/method.md#minimum-detectable-shift); "none" = undetectable."""
    if "mds_up" not in ls and "mds_down" not in ls:
        return DASH
    up, down = _num(ls.get("mds_up")), _num(ls.get("mds_down"))
    return f"{'none' if up is None else _pct(up)} / {'none' if down is None else _pct(down)}"


def table_tasks(runs: list[Run]) -> str:
    """Per benchmark task of the first run: scores of A and B and the paired gap."""
    rows = []
    for t in runs[0].report.get("tasks") or []:
        delta = _f(t.get("delta"), "+.1f") + _ci(t.get("ci_low"), t.get("ci_high"), lambda v: _f(v, "+.1f"))
        rows.append([t.get("name", "?"), t.get("category") or DASH, t.get("metric") or DASH, _f(t.get("n"), ".0f"),
                     _f(t.get("score_a"), ".1f"), _f(t.get("score_b"), ".1f"), delta])
    return md_table(["task", "category", "metric", "n", "A", "B", "Δscore [CI]"], rows)


def table_quality(runs: list[Run]) -> str:
    """Crosscoder quality of the first run per model, and the gate verdicts."""
    q = runs[0].report.get("quality") or {}
    gates = q.get("gates") or []
    rows = []
    for m, v in (q.get("models") or {}).items():
        mine = [g for g in gates if g.get("model") == m]
        failed = [g.get("metric", "?") for g in mine if g.get("passed") is False]
        verdict = DASH if not mine else ("pass" if not failed else "fail: " + ", ".join(failed))
        ce = _f(v.get("delta_ce"), ".3f")
        if _num(v.get("delta_ce_web")) is not None:
            ce += f" ({_f(v.get('delta_ce_web'), '.3f')} / {_f(v.get('delta_ce_chat'), '.3f')})"
        rows.append([m, _f(v.get("ev"), ".3f"), _f(v.get("l0"), ".1f"), _pct(v.get("dead_fraction")).lstrip("+"),
                     ce, _f(v.get("kl"), ".3f"), verdict])
    for g in gates:
        if g.get("model") not in (q.get("models") or {}):
            rows.append([g.get("model", "?"), DASH, DASH, DASH, DASH, DASH,
                         f"{g.get('metric', '?')}: " + {True: "pass", False: "fail"}.get(g.get("passed"), DASH)])
    return md_table(["model", "EV", "L0", "dead", "spliced ΔCE, nats (web / chat)", "KL", "gates"], rows)


def _kind(stage: str) -> str:
    return stage.split("-", 1)[0]


def _summary(done: dict, key: Any) -> str:
    """The model a stage ran (from KEY.json) and the scalar facts of its DONE.json (no paths, no timings)."""
    spec = (key.get("model") or {}).get("spec") if isinstance(key, dict) and isinstance(key.get("model"), dict) else None
    parts = [f"model {spec}"] if isinstance(spec, str) else []
    parts += [f"{k} {v}" for k, v in done.items()
             if k != "seconds" and isinstance(v, (int, float, str)) and not isinstance(v, bool)
             and not (isinstance(v, str) and "/" in v)]
    return ", ".join(parts) or DASH


def table_timings(runs: list[Run]) -> str:
    """Compute seconds of each stage of the first run (from DONE.json) and the run's wall time (report timings)."""
    run = runs[0]
    order = {k: i for i, k in enumerate(STAGE_ORDER)}
    names = sorted(run.stages, key=lambda n: (order.get(_kind(n), len(order)), _kind(n), n))
    rows = [[_kind(n), f"`{n}`", _f(run.stages[n].get("seconds"), ".1f"), _summary(run.stages[n], run.keys.get(n))] for n in names]
    total = ((run.report.get("run") or {}).get("timings") or {}).get("total")
    if _num(total) is not None:
        rows.append(["**total**", "wall time of the run", _f(total, ".1f"), "stages that ran in parallel overlap"])
    return md_table(["stage", "directory", "seconds", "what"], rows)


def _significant(report: dict, alpha: float) -> tuple[list[str], str]:
    """Categories with q (all) < alpha, and the smallest q among the others."""
    qs = [(c.get("name", "?"), _num((c.get("latent_shift") or {}).get("q_value"))) for c in report.get("categories") or []]
    qs = [(n, q) for n, q in qs if q is not None]
    sig = [n for n, q in qs if q < alpha]
    rest = sorted(((q, n) for n, q in qs if q >= alpha))
    return sig, (f"{_g(rest[0][0])} ({rest[0][1]})" if rest else DASH)


def table_runs(runs: list[Run]) -> str:
    """One row per run: the pair, the specific-latent counts, the significant categories and the overall gap."""
    rows = []
    for run in runs:
        r = run.report
        models = ((r.get("run") or {}).get("config") or {}).get("models") or {}
        sel = r.get("selection_counts") or {}
        sig, rest = _significant(r, run.alpha)
        ov = r.get("overall") or {}
        gap = _f(ov.get("delta"), "+.1f") + _ci(ov.get("ci_low"), ov.get("ci_high"), lambda v: _f(v, "+.1f"))
        st = DASH if "B_selected" not in sel else f"{sel.get('B_selected')} / {sel.get('A_selected', DASH)}"
        rows.append([f"`{run.label}`", models.get("finetuned") or (r.get("run") or {}).get("models", {}).get("B", DASH),
                     st, sel.get("removed_by_latent_scaling", DASH), ", ".join(sig) or "none", rest, gap,
                     _f(((r.get("run") or {}).get("timings") or {}).get("total"), ".0f")])
    alpha = runs[0].alpha
    return md_table(["run", "fine-tune", "S / T after latent scaling (first seed)", "removed by latent scaling",
                     f"significant (q all < {alpha:.2g})", "smallest other q", "overall Δscore [CI]",
                     "wall s"], rows)


TABLES: dict[str, Callable[[list[Run]], str]] = {
    "categories": table_categories,
    "tasks": table_tasks,
    "quality": table_quality,
    "timings": table_timings,
    "runs": table_runs,
}
PER_RUN = {"categories", "tasks", "quality", "timings"}


# ----------------------------------------------------------------------------------------------------------------------
# README blocks


def command_line(run_labels: list[str]) -> str:
    return "python -m lm_diff.dev.figures " + " ".join(run_labels)


def _provenance(run: Run) -> str:
    r = run.report
    diff = ((r.get("run") or {}).get("inputs") or {}).get("diff")
    stage = f", stage `{Path(diff).name}`" if isinstance(diff, str) and diff else ""
    return f"`{run.label}` (report of {r.get('generated_at', 'unknown date')}{stage})"


def render(name: str, runs: list[Run]) -> str:
    """Table NAME with its stamp: the command that made it and the run(s) or result file it came from."""
    if name in FILE_TABLES:
        return (f"<!-- generated; edit the results, not this block -->\n*Generated by `python -m lm_diff.dev.figures` "
                f"(`make figures`) from `{SOURCES[name]}`.*\n\n" + FILE_TABLES[name]())
    sources = [runs[0]] if name in PER_RUN else runs
    stamp = (f"<!-- generated; edit the runs, not this block -->\n"
             f"*Generated by `{command_line([r.label for r in runs])}` (`make figures`) from "
             + ", ".join(_provenance(r) for r in sources) + ".*")
    return stamp + "\n\n" + TABLES[name](runs)


def blocks(text: str, path: str = "README") -> list[tuple[str, int, int]]:
    """(name, start, end) of each marked block's inner text; unknown names and unpaired markers are UserErrors."""
    found, open_name, open_at = [], None, 0
    for m in MARKER_RE.finditer(text):
        name, edge = m.group("name"), m.group("edge")
        if name not in TABLES and name not in FILE_TABLES:
            known = ", ".join([*TABLES, *FILE_TABLES])
            raise UserError(f"{path}: unknown figure '{name}' in {m.group(0)}; known: {known}.")
        if edge == "begin":
            if open_name is not None:
                raise UserError(f"{path}: figures:{name}:begin inside the open block '{open_name}'; "
                                f"close it with <!-- figures:{open_name}:end --> first.")
            open_name, open_at = name, m.end()
        else:
            if open_name != name:
                raise UserError(f"{path}: {m.group(0)} without a matching <!-- figures:{name}:begin -->.")
            found.append((name, open_at, m.start()))
            open_name = None
    if open_name is not None:
        raise UserError(f"{path}: <!-- figures:{open_name}:begin --> is never closed; add "
                        f"<!-- figures:{open_name}:end --> after it.")
    return found


def rewrite(text: str, runs: list[Run], path: str = "README") -> tuple[str, list[str]]:
    """``text`` with every marked block regenerated from ``runs``; also the names of the blocks rewritten."""
    found = blocks(text, path)
    if not found:
        raise UserError(f"{path} has no figure blocks; add <!-- figures:NAME:begin --> and <!-- figures:NAME:end --> "
                        f"lines around where table NAME should go ({', '.join(TABLES)}).")
    out, pos = [], 0
    for name, start, end in found:
        out += [text[pos:start], "\n", render(name, runs), "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out), [n for n, _, _ in found]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lm_diff.dev.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (lm-diff run --out); the first one feeds "
                    "the per-run tables")
    ap.add_argument("--readme", help="rewrite the marked blocks of this Markdown file (else print every table)")
    args = ap.parse_args(argv)
    try:
        runs = [load_run(r) for r in args.runs]
        if args.readme is None:
            for name in TABLES:
                print(f"## {name}\n\n{render(name, runs)}\n")
            return 0
        readme = Path(args.readme)
        if not readme.is_file():
            raise UserError(f"{readme} does not exist; pass the Markdown file that holds the figure blocks.")
        old = readme.read_text(encoding="utf-8")
        new, names = rewrite(old, runs, str(readme))
        if new != old:
            write_text(readme, new)
        print(f"{readme}: {'rewrote' if new != old else 'unchanged'} {', '.join(names)} from {', '.join(args.runs)}")
        return 0
    except UserError as e:  # the CLI edge: one message, exit 2
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
