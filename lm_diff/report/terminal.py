"""The rich terminal summary of a report."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from lm_diff import console as _console
from lm_diff.report.markdown import category_rows, fmt_ci, fmt_num


def print_summary(report: dict, console: Any = None) -> None:
    """Rich terminal summary: gates, overall gap, category table, where the files are."""
    con = console or _console.out()
    q = report["quality"]
    if q["available"]:
        style = "green" if q["passed"] else "bold red"
        con.print(f"[{style}]quality gates: {'PASS' if q['passed'] else 'LOW CONFIDENCE'}[/{style}]")
        for g in q["gates"]:
            if g["passed"] is False:
                con.print(f"  [red]FAIL[/red] {escape(str(g['model']))} {g['metric']} = {g['value']} (gate {g['op']} {g['threshold']})")
    else:
        con.print("[yellow]benchmarks-only report[/yellow] (no crosscoder artifacts)")
    o = report.get("overall")
    if o:
        con.print(f"overall Δscore (B − A): [bold]{fmt_num(o['delta'], 1, True)}[/bold] points {fmt_ci(o['ci_low'], o['ci_high'])} over {o['n']} docs")
    t = Table(title="categories", show_lines=False)
    for h in ["category", "Δscore [CI]", "share ratio [CI]", "q all / linked", "n_S/n_T", "seeds", "sign"]:
        t.add_column(h)
    for r in category_rows(report):
        t.add_row(*(escape(str(x)) for x in (r[0], r[1], r[2], r[4], r[5], r[9], r[10])))
    con.print(t)
