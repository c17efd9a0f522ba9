"""lm_diff.io.read_jsonl: the one JSON-lines reader (suites, join, organisms, analysis)."""

from __future__ import annotations

import pytest

from lm_diff.errors import UserError
from lm_diff.io import read_jsonl


def test_read_jsonl_skips_blank_lines(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_names_file_line_and_fix(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"rows\.jsonl:2: not valid JSON \(.*\); rerun it"):
        read_jsonl(p, fix="rerun it")


def test_written_files_get_the_ordinary_mode(tmp_path):
    """Atomic writes go through private temporary files; the result is readable as an ordinary write would be."""
    import stat

    from lm_diff import io as lio

    f = lio.write_text(tmp_path / "report.html", "<html></html>")
    assert stat.S_IMODE(f.stat().st_mode) == lio.FILE_MODE
    with lio.atomic_dir(tmp_path / "stage") as d:
        (d / "x").write_text("1")
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == lio.DIR_MODE
