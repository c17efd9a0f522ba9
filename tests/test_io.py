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
