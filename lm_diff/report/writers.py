"""Built-in report writers: ``json`` (report.json), ``md`` (report.md) and ``html`` (one self-contained report.html)."""

from __future__ import annotations

from lm_diff.plugins.hookspecs import hookimpl


@hookimpl
def lm_diff_report_writers():
    """The json, md and html writers; each is ``write(report, out_dir) -> Path`` and writes atomically."""
    from lm_diff.report.build import write_json_report, write_md_report
    from lm_diff.report.html import write_html_report

    return {"json": write_json_report, "md": write_md_report, "html": write_html_report}
