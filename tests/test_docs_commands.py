"""Every command README.md and docs/*.md show parses against the CLI it names, so the docs cannot drift from it.

Commands are read from fenced code blocks (whole lines, ``\\`` continuations joined, ``#`` comments cut) and from
inline code spans: ``lm-diff …`` (and ``torchrun … -m lm_diff …``) through lm-diff's own parser, the arguments of
``lm-diff eval`` and ``lm_eval …`` through lm-eval's parser (as ``lm-diff eval`` hands them over), ``make X`` against
the Makefile's targets, ``python -m MODULE`` against the importable modules. Placeholders stay as values (``CONFIG``,
``DIR``); ``[--flag]`` counts as written; ``a|b`` and ``{a,b}`` take the first choice; ``A / B`` expands to each;
an option whose value is ``…`` is checked by name only. A mention in prose (``lm-diff report --diff``, missing
required arguments) is checked by name: the subcommand and every option it names exist. Every lm-diff subcommand's
``--help`` must exit 0."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from lm_diff.bench.lm_eval_cli import build_argv
from lm_diff.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
START = re.compile(r"(?:torchrun\s.*?-m lm_diff\s|lm-diff\s|lm_eval\s|python -m lm_eval\s|make\s|python -m lm_diff[.\w]*)")
ELLIPSIS = {"…", "...", "…\\"}


def _cut_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for every command shown in the docs."""
    found: list[tuple[str, str]] = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        fenced, joined = False, ""
        for n, line in enumerate(lines, 1):
            where = f"{path.relative_to(REPO)}:{n}"
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                text = _cut_comment(line).rstrip()
                joined += " " + text.rstrip("\\")
                if text.endswith("\\"):
                    continue
                spans, joined = [joined.strip()], ""
            else:
                spans = re.findall(r"`([^`]+)`", line)
            for span in spans:
                m = START.search(span)
                if m and (fenced or m.start() == 0):
                    found.append((where, span[m.start():].strip()))
    return found


def _tokens(command: str) -> list[list[str]]:
    """The command as argv lists: ``A / B`` expanded, brackets dropped, the first of ``a|b`` / ``{a,b}`` taken."""
    command = re.sub(r"\$\((python -m [^)]*)\)", "SUBST", command)
    command = command.replace("[", " ").replace("]", " ")
    command = re.sub(r"\{([\w-]+),[^}]*\}", r"\1", command)
    head, _, rest = command.partition(" ")
    words = shlex.split(rest)
    variants = [[]]
    i = 0
    while i < len(words):
        if i + 2 < len(words) and words[i + 1] == "/":  # "capture / train / diff CONFIG"
            alts = [words[i]]
            while i + 2 < len(words) and words[i + 1] == "/":
                alts.append(words[i + 2])
                i += 2
            variants = [v + [a] for v in variants for a in alts]
        else:
            w = words[i]
            if "|" in w and not w.startswith("'"):
                w = w.split("|")[0]
            variants = [v + [w] for v in variants]
        i += 1
    return [[head, *v] for v in variants]


def _split_ellipsis(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv without ``…`` placeholders, and the options whose value was ``…`` (checked by name only)."""
    out, named = [], []
    for w in argv:
        if w in ELLIPSIS:
            if out and out[-1].startswith("--"):
                named.append(out.pop())
            continue
        out.append(w)
    return out, named


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code:
                raise AssertionError(err.getvalue().strip().splitlines()[-1]) from None


def _options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Option strings of the (sub)parser that ``argv`` selects."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for w in argv:
                if w in a.choices:
                    return _options(a.choices[w], argv[argv.index(w) + 1:])
    return {s for a in parser._actions for s in a.option_strings}


def lm_eval_parser() -> argparse.ArgumentParser:
    from lm_eval._cli.harness import HarnessCLI

    return HarnessCLI()._parser


def check(command: str) -> None:
    """Raise AssertionError when ``command`` does not parse against the CLI it names."""
    for argv in _tokens(command):
        head = argv[0]
        if head == "make":
            targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
            assert argv[1] in targets, f"make {argv[1]}: no such Makefile target"
            continue
        if head == "python" and argv[1] == "-m" and argv[2] != "lm_eval":
            assert importlib.util.find_spec(argv[2]) is not None, f"python -m {argv[2]}: no such module"
            continue
        if head == "python":  # python -m lm_eval ...
            argv = ["lm_eval", *argv[3:]]
        if head == "torchrun":
            argv = ["lm-diff", *argv[argv.index("lm_diff") + 1:]]
        args, named = _split_ellipsis(argv[1:])
        if argv[0] == "lm-diff" and args[:1] != ["eval"]:
            parser = build_parser()
        else:  # lm_eval, or lm-diff eval (its arguments are lm-eval's)
            args = build_argv(args[1:] if argv[0] == "lm-diff" else args, "TASKS_DIR")
            parser = lm_eval_parser()
            if args in ([], ["run"]):
                continue  # bare: lm-eval prints its help
        missing = [o for o in named if o not in _options(parser, args)]
        assert not missing, f"{' '.join(missing)}: no such option"
        try:
            _parse(parser, args)
        except AssertionError as exc:  # a mention by name: its subcommand and options must exist
            if "are required" not in str(exc) and "expected one argument" not in str(exc):
                raise
            unknown = [w for w in args if w.startswith("--") and w.split("=")[0] not in _options(parser, args)]
            assert not unknown, f"{' '.join(unknown)}: no such option"


COMMANDS = doc_commands()


def test_the_docs_show_commands_of_every_kind():
    heads = {c.split()[0] for _, c in COMMANDS}
    assert {"lm-diff", "lm_eval", "make", "torchrun", "python"} <= heads
    assert len(COMMANDS) > 40


def test_every_documented_command_parses():
    failed = []
    for where, command in COMMANDS:
        try:
            check(command)
        except AssertionError as exc:
            failed.append(f"{where}: {command!r}: {exc}")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("bad", ["lm-diff eval2 x", "lm-diff plan CONFIG --gpu h300", "lm-diff run CONFIG --outdir X", "lm-diff report --difff",
                                 "lm-diff plan CONFIG --gpus …", "make demo2", "lm_eval --modle hf",
                                 "lm-diff eval --model hf --taskz x", "python -m lm_diff.nothing"])
def test_a_drifted_command_is_caught(bad):
    with pytest.raises(AssertionError):
        check(bad)


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        if name == "eval":  # lm-eval's own help (test_eval_cli)
            continue
        with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(io.StringIO()) as out:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0 and f"lm-diff {name}" in out.getvalue()
