"""Report writers: the built-in ``json`` (report.json), ``md`` (report.md) and ``html`` (one self-contained
report.html), and ``write_report``, which writes the set as one unit."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from lm_diff.errors import UserError
from lm_diff.io import write_json, write_text
from lm_diff.plugins.hookspecs import hookimpl
from lm_diff.plugins.manager import hook, merged_mapping
from lm_diff.report.export import write_neuronpedia
from lm_diff.report.html import write_html_report
from lm_diff.report.markdown import to_markdown

DEFAULT_FORMATS = ("json", "md", "html", "neuronpedia")
BUILTIN_FILES = ("report.json", "report.md", "report.html", "neuronpedia")


def write_json_report(report: dict, out_dir: Path) -> Path:
    return write_json(Path(out_dir) / "report.json", report)


def write_md_report(report: dict, out_dir: Path) -> Path:
    return write_text(Path(out_dir) / "report.md", to_markdown(report))


@hookimpl
def lm_diff_report_writers():
    """The json, md, html and neuronpedia (latent export) writers; each is ``write(report, out_dir) -> Path`` and
    writes atomically."""
    return {"json": write_json_report, "md": write_md_report, "html": write_html_report, "neuronpedia": write_neuronpedia}


def report_writers() -> dict[str, Any]:
    """Format name -> ``write(report, out_dir) -> Path`` from every ``lm_diff_report_writers`` hook (first wins)."""
    return merged_mapping(hook().lm_diff_report_writers())


def write_report(report: dict, out_dir: str | Path, formats: Optional[Iterable[str]] = None) -> dict[str, Path]:
    """Run the writers for ``formats`` (default json, md, html) and put their files into ``out_dir`` as one unit.

    Every writer writes into a temporary folder next to ``out_dir``; only when all succeeded are the files renamed
    into place, and a built-in report file of a format not written this time is removed, so a report.html never
    sits next to a report.json of another run. A failing writer leaves ``out_dir`` as it was. Returns {format: path}.
    """
    writers = report_writers()
    formats = list(formats or DEFAULT_FORMATS)
    unknown = [f for f in formats if f not in writers]
    if unknown:
        raise UserError(f"report format(s) {', '.join(unknown)} have no writer; available: {', '.join(sorted(writers))} (set report.formats)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        written = {f: Path(writers[f](report, tmp)) for f in formats}
        final = {}
        for f, p in written.items():
            rel = p.resolve().relative_to(tmp.resolve()) if p.is_absolute() else p.relative_to(tmp)
            final[f] = out / rel
        names = {p.name for p in final.values()}
        for f, p in written.items():
            final[f].parent.mkdir(parents=True, exist_ok=True)
            if p.is_dir() and final[f].is_dir():  # a writer's folder replaces the previous one whole
                shutil.rmtree(final[f])
            os.replace(p, final[f])
        for name in BUILTIN_FILES:
            if name not in names:
                if (out / name).is_dir():
                    shutil.rmtree(out / name, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (out / name).unlink()
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
