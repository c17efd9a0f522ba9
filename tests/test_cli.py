import json
import subprocess
import sys

import pytest

from lm_diff.cli import build_parser, main

COMMANDS = ["demo", "run", "organisms", "eval", "capture", "train", "diff", "report", "ci", "plugins", "config"]


def test_help_lists_every_reserved_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: lm-diff " + name in capsys.readouterr().out


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "lm_diff", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("lm-diff ")


def test_plugins_lists_builtin_hooks(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert "lm_diff.categorize.taxonomy" in names
    taxonomy = next(r for r in rows if r["name"] == "lm_diff.categorize.taxonomy")
    assert taxonomy["builtin"] and "lm_diff_taxonomy" in taxonomy["hooks"]


def test_bad_set_override_is_a_user_error(capsys):
    assert main(["config", "demo", "--set", "nonsense"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_parser_builds():
    assert build_parser().prog == "lm-diff"
