"""`lm-diff eval --model hf ...` (the form README and docs/lm_eval.md show) reaches lm-eval's CLI unchanged."""

from __future__ import annotations

import sys

import pytest

from lm_diff import cli
from lm_diff.bench import lm_eval_cli
from lm_diff.bench.suites import tasks_dir


@pytest.fixture
def captured(monkeypatch):
    import lm_eval.__main__ as lm_main

    seen: dict = {}

    def fake_cli_evaluate():
        seen["argv"] = list(sys.argv)
        raise SystemExit(0)

    monkeypatch.setattr(lm_main, "cli_evaluate", fake_cli_evaluate)
    monkeypatch.setitem(sys.modules, "lm_diff.bench.lm_eval_plugin", sys.modules.get("lm_diff.bench.lm_eval_plugin") or
                        type(sys)("lm_diff.bench.lm_eval_plugin"))  # skip torch for an argument test
    return seen


def test_documented_form_with_leading_flags(captured):
    argv = ["eval", "--model", "hf", "--model_args", "pretrained=/m,dtype=float32", "--tasks", "diff_gemma",
            "--output_path", "out", "--log_samples"]
    assert cli.main(argv) == 0
    assert captured["argv"] == ["lm-eval", "run", *argv[1:], "--include_path", str(tasks_dir())]


def test_subcommands_and_user_include_path_pass_through(captured):
    assert cli.main(["eval", "ls", "groups"]) == 0
    assert captured["argv"] == ["lm-eval", "ls", "groups", "--include_path", str(tasks_dir())]
    assert cli.main(["eval", "run", "--tasks", "x", "--include_path", "/mine"]) == 0
    assert captured["argv"] == ["lm-eval", "run", "--tasks", "x", "--include_path", "/mine"]


def test_help_is_lm_evals_with_our_usage_line(captured, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--help"])
    assert e.value.code == 0 and "usage: lm-diff eval" in capsys.readouterr().out
    assert lm_eval_cli.build_argv(["--help"], "/t") == ["--help"]
