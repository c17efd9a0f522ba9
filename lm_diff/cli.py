"""The ``lm-diff`` command.

User mistakes print one message and exit 2 (no traceback unless ``--debug``). Each subcommand's work lives in its
pipeline-stage module; this file only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from rich.markup import escape
from rich.table import Table

from lm_diff import config as C
from lm_diff import console
from lm_diff.config import load_config
from lm_diff.errors import UserError
from lm_diff.plugins.manager import list_plugins


def _stages():
    """The stage packages, imported when a command runs rather than for ``--help``: they import torch, transformers,
    scipy and lm-eval, ~5-15 s on a small machine that argument parsing must not pay."""
    from lm_diff import organisms  # noqa: PLC0415 - see the docstring
    from lm_diff.bench import lm_eval_cli  # noqa: PLC0415 - see the docstring
    from lm_diff.run import pipeline, reporting  # noqa: PLC0415 - see the docstring
    from lm_diff.run import plan as run_plan  # noqa: PLC0415 - see the docstring

    return organisms, lm_eval_cli, pipeline, reporting, run_plan


def _console():
    return console.out()


def _err_console():
    return console.err()


def _parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set crosscoder.k=16")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(args) -> Any:
    return load_config(args.config, overrides=_parse_sets(getattr(args, "set", None)))


# ----------------------------------------------------------------------------------------------------------------------
# Command handlers


def cmd_plugins(args) -> int:
    rows = list_plugins()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="lm_diff plugins")
    table.add_column("plugin")
    table.add_column("kind")
    table.add_column("hooks")
    for r in rows:
        table.add_row(r["name"], "built-in" if r["builtin"] else f"entry point {r['version'] or ''}".strip(), ", ".join(r["hooks"]))
    _console().print(table)
    return 0


def cmd_config(args) -> int:
    cfg = _load(args)
    if args.explain:
        table = Table(title="configuration keys")
        table.add_column("key")
        table.add_column("value")
        table.add_column("meaning")

        def walk(obj, prefix=""):
            docs = C.field_docs(type(obj))
            for f in dataclasses.fields(obj):
                if f.metadata.get("internal"):
                    continue
                value = getattr(obj, f.name)
                key = f"{prefix}{f.name}"
                if dataclasses.is_dataclass(value):
                    walk(value, key + ".")
                else:
                    table.add_row(key, repr(value), docs.get(f.name, ""))

        walk(cfg)
        _console().print(table)
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    _err_console().print(f"[green]ok[/green] {escape(str(cfg.source))}: valid")
    return 0


def cmd_organisms(args) -> int:
    family = _stages()[0].natural if args.family == "natural" else _stages()[0]
    if args.action == "build":
        path = family.build(size=args.size, out=args.out, force=args.force)
        _console().print(f"[green]organisms[/green] ({args.family} {args.size}) ready in {path}")
    elif args.action == "path":
        print(family.organism_dir(args.size))
    return 0


def cmd_init(args) -> int:
    from lm_diff.run.init import init_config  # noqa: PLC0415 - imports lm-eval and transformers (see _stages)

    suite = [t for part in (args.suite or []) for t in part.split(",") if t.strip()]
    path = init_config(args.base, args.finetuned, suite=suite or None, out=args.out, tokens=args.tokens,
                       force=args.force, trust_remote_code=args.trust_remote_code)
    _console().print(f"[green]wrote[/green] {escape(str(path))}: check it with `lm-diff config {escape(str(path))}`, "
                     f"size it with `lm-diff plan {escape(str(path))}`, then `lm-diff run {escape(str(path))} --out runs/NAME`")
    return 0


def cmd_eval(args) -> int:
    main = _stages()[1].main
    return int(main(args.lm_eval_args) or 0)


def cmd_capture(args) -> int:
    fn = getattr(_stages()[2], 'run_capture_stage')
    fn(_load(args), Path(args.out))
    return 0


def cmd_plan(args) -> int:
    run_plan = _stages()[4]
    run_plan.print_plan(run_plan.plan(_load(args), gpu=args.gpu, model_config=args.model_config), as_json=args.json)
    return 0


def cmd_train(args) -> int:
    fn = getattr(_stages()[2], 'run_train_stage')
    fn(_load(args), Path(args.out))
    return 0


def cmd_diff(args) -> int:
    fn = getattr(_stages()[2], 'run_diff_stage')
    fn(_load(args), Path(args.out))
    return 0


def cmd_run(args) -> int:
    fn = getattr(_stages()[2], 'run')
    fn(_load(args), Path(args.out), force=args.force)
    return 0


def cmd_demo(args) -> int:
    fn = getattr(_stages()[2], 'run')
    cfg = load_config(args.config, overrides=_parse_sets(args.set))
    fn(cfg, Path(args.out), force=args.force)
    return 0


def cmd_report(args) -> int:
    fn = _stages()[3].report_from_runs
    fn(base=args.base, finetuned=args.finetuned, diff=args.diff, out=Path(args.out), config=args.config)
    return 0


def cmd_ci(args) -> int:
    fn = _stages()[3].ci
    return int(
        fn(
            base=args.base,
            finetuned=args.finetuned,
            diff=args.diff,
            rules=args.fail_on,
            summary=args.summary,
            out=Path(args.out) if args.out else None,
            config=args.config,
        )
    )


# ----------------------------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lm-diff",
        description="Explain why a fine-tune scores differently from its base model: lm-eval benchmarks on both models, "
        "crosscoder latent diffing, and one report linking score gaps to capability categories.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    p.add_argument("--version", action="version", version=f"lm-diff {__import__('lm_diff').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(handler=handler)
        return sp

    def config_args(sp: argparse.ArgumentParser, default: Optional[str] = None) -> None:
        if default is None:
            sp.add_argument("config", help="run config YAML (or a packaged name such as 'demo')")
        else:
            sp.add_argument("config", nargs="?", default=default, help=f"run config YAML (default: {default})")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. crosscoder.k=16")

    sp = add("demo", cmd_demo, "Build the demo model organisms if needed and run the whole pipeline on them, with its report.")
    config_args(sp, default="demo")
    sp.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    sp.add_argument("--force", action="store_true", help="recompute every stage")

    sp = add("run", cmd_run, "Run benchmarks, capture, training, diffing, categories, linkage and report for a model pair.")
    config_args(sp)
    sp.add_argument("--out", required=True, help="run directory (stages are cached and resumed here)")
    sp.add_argument("--force", action="store_true", help="recompute every stage")

    sp = add("init", cmd_init, "Write a commented run config for your model pair (checked for compatibility first).")
    sp.add_argument("base", help="base model: a local directory or a hub id")
    sp.add_argument("finetuned", help="fine-tuned model: a local directory or a hub id")
    sp.add_argument("--suite", action="append", metavar="TASKS",
                    help="lm-eval tasks or groups, comma-separated or repeated (default: diff_leaderboard)")
    sp.add_argument("--out", default=None, help="config file to write (default: lm_diff_<finetuned>.yaml)")
    sp.add_argument("--tokens", type=int, default=20_000_000, help="capture token budget the sizes follow (default 20M)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing config file")
    sp.add_argument("--trust-remote-code", action="store_true", help="allow the model repos' own code to read their configs")

    sp = add("organisms", cmd_organisms, "Build model organisms: small model pairs with planted capability differences.")
    sp.add_argument("action", choices=["build", "path"], help="build the organisms, or print their cache path")
    sp.add_argument("--size", choices=["tiny", "demo"], default="demo", help="tiny (test fixture) or demo (default)")
    sp.add_argument("--family", choices=["demo", "natural"], default="demo",
                    help="demo (Llama, planted by token surgery and data) or natural (Qwen2, real languages, a plain "
                         "full fine-tune on a shifted mix)")
    sp.add_argument("--out", default=None, help="output directory (default: the content-addressed cache)")
    sp.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")

    # Every argument, flags included (--model hf ..., -h), belongs to lm-eval: with '+' as the only prefix this parser
    # sees none of them as its own options, so REMAINDER takes them all (argparse leaves a leading '--flag' unmatched).
    eval_help = "Run lm-eval with lm_diff's tasks on the include path (works in editable installs)."
    sp = sub.add_parser("eval", help=eval_help, description=eval_help, prefix_chars="+", add_help=False)
    sp.set_defaults(handler=cmd_eval)
    sp.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments passed to lm_eval (e.g. --model hf ...)")

    sp = add("capture", cmd_capture, "Capture paired residual-stream activations of both models into an activation store.")
    config_args(sp)
    sp.add_argument("--out", required=True, help="run directory")

    sp = add("plan", cmd_plan, "Estimate each stage's FLOPs, time, device/host memory and disk before running (no weights).")
    config_args(sp)
    sp.add_argument("--gpu", choices=["h100", "h200", "a100", "l4", "cpu"], default="h100", help="accelerator (default: h100)")
    sp.add_argument("--model-config", default=None, help="a model's config.json (or its directory) used for every model")
    sp.add_argument("--json", action="store_true", help="print one JSON object with a 'stages' list")

    sp = add("train", cmd_train, "Train the crosscoder(s) on a captured activation store.")
    config_args(sp)
    sp.add_argument("--out", required=True, help="run directory (capture is run first if missing)")

    sp = add("diff", cmd_diff, "Per-latent table, latent scaling, categories and category shifts for a trained crosscoder.")
    config_args(sp)
    sp.add_argument("--out", required=True, help="run directory (earlier stages are run first if missing)")

    sp = add("report", cmd_report, "Build the combined report from existing lm_eval --log_samples outputs and diff artifacts.")
    sp.add_argument("--base", required=True, help="lm_eval --output_path directory (or results JSON) of the base model")
    sp.add_argument("--finetuned", required=True, help="lm_eval --output_path directory (or results JSON) of the fine-tune")
    sp.add_argument("--diff", default=None, help="run directory with diff artifacts (omit for a benchmarks-only report)")
    sp.add_argument("--out", required=True, help="report directory")
    sp.add_argument("--config", default=None, help="run config for statistics settings (default: built-in defaults)")

    sp = add("ci", cmd_ci, "Regression gate: exit 1 when a --fail-on rule fails; writes a Markdown job summary.")
    sp.add_argument("--base", required=True, help="lm_eval output of the base model")
    sp.add_argument("--finetuned", required=True, help="lm_eval output of the fine-tune")
    sp.add_argument("--diff", default=None, help="run directory with diff artifacts")
    sp.add_argument("--fail-on", action="append", default=[], metavar="RULE",
                    help="e.g. 'safety<-2.0' (score gap in points), 'overall<0', 'code.ci_high<0'")
    sp.add_argument("--summary", default=None, help="write the Markdown summary here (default: $GITHUB_STEP_SUMMARY if set)")
    sp.add_argument("--out", default=None, help="also write the full report here")
    sp.add_argument("--config", default=None, help="run config for statistics settings")

    sp = add("plugins", cmd_plugins, "List the loaded plugins and the hooks each implements.")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("config", cmd_config, "Validate a run config and print it resolved (--explain: every key with its meaning).")
    config_args(sp)
    sp.add_argument("--explain", action="store_true", help="show every key, its value and its meaning")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("LM_DIFF_DEBUG") == "1"
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        if debug:
            raise
        _err_console().print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _err_console().print("[yellow]interrupted[/yellow]: rerun the same command to resume")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
