"""`lm-diff init BASE FINETUNED`: a config for a user's pair that `lm-diff config` accepts and `lm-diff plan` sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import make_tiny_model, make_tokenizer
from transformers import AutoTokenizer

from lm_diff.cli import main
from lm_diff.run.init import sizes


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_pair")
    for name, seed in (("base", 0), ("ft", 1)):
        make_tokenizer(root / name)
        make_tiny_model("gemma2", seed=seed, layers=4, hidden=64, out=root / name)
    make_tokenizer(root / "wide")
    make_tiny_model("gemma2", seed=2, layers=4, hidden=96, out=root / "wide")
    return root


def test_init_writes_a_config_that_config_accepts_and_plan_sizes(pair, tmp_path, capsys):
    out = tmp_path / "pair.yaml"
    assert main(["init", str(pair / "base"), str(pair / "ft"), "--suite", "diff_gemma_self_reference",
                 "--out", str(out), "--tokens", "3000000"]) == 0
    text = out.read_text()
    data = yaml.safe_load(text)
    assert data["models"] == {"base": str(pair / "base"), "finetuned": str(pair / "ft"), "dtype": "float32",
                              "device": data["models"]["device"]}
    assert data["layers"] == [2]  # 4 layers: the middle one
    assert data["crosscoder"]["dict_size"] == 8 * 64 and data["crosscoder"]["k"] == 8
    assert data["crosscoder"]["exclusive"] == 8 * 64 // 8  # dedicated latents, as both organism families use
    assert data["benchmarks"]["tasks"] == ["diff_gemma_self_reference"]
    assert data["benchmarks"]["apply_chat_template"] is True  # the tiny tokenizer has a chat template
    assert data["categories"]["grounding"] == "benchmark"
    assert "#   self_reference: diff_gemma_self_reference_identity" in text  # the suite's categories, commented
    assert main(["config", str(out)]) == 0
    capsys.readouterr()
    assert main(["plan", str(out), "--gpu", "cpu", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in plan["stages"]}
    assert stages["capture"]["flops"] > 0 and any(k.startswith("train") and v["flops"] > 0 for k, v in stages.items())
    assert main(["init", str(pair / "base"), str(pair / "ft"), "--out", str(out)]) == 2  # no silent overwrite


def test_init_refuses_an_incompatible_pair_before_writing(pair, tmp_path, capsys):
    out = tmp_path / "bad.yaml"
    assert main(["init", str(pair / "base"), str(pair / "wide"), "--suite", "diff_gemma_self_reference",
                 "--out", str(out)]) == 2
    assert "hidden size 64" in capsys.readouterr().err and not out.exists()
    assert main(["init", str(pair / "base"), str(pair / "ft"), "--suite", "no_such_task_xyz", "--out", str(out)]) == 2
    assert "no_such_task_xyz" in capsys.readouterr().err and not out.exists()


def test_sizes_follow_width_and_budget():
    assert sizes(3584, 42, 20_000_000) == {"layer": 21, "expansion": 32, "dict_size": 114688, "k": 100,
                                           "exclusive": 14336, "steps": 19531, "batch_size": 2048, "warmup_steps": 1000,
                                           "threshold_start_step": 1000, "dead_tokens": 10_000_000}
    assert sizes(64, 4, 40_000)["dict_size"] == 256 and sizes(64, 4, 40_000)["steps"] == 200


def test_a_small_budget_gets_a_schedule_that_fits_its_steps():
    """At 500k tokens init writes 488 steps; with the defaults (warmup 1000, threshold from step 1000, dead after 10M
    tokens) the run ended in its warmup, the learning rate never above half its value: the crosscoders of a local
    pair reached EV 0.50 / 0.47 (quality gate 0.7) where the same steps with this schedule reach 0.75 / 0.74."""
    s = sizes(96, 3, 500_000)
    assert s["steps"] == 488
    assert s["warmup_steps"] == 48 and s["threshold_start_step"] == 244
    assert s["dead_tokens"] == 250_000 < s["steps"] * s["batch_size"]


def test_init_on_a_chat_transcript_suite_leaves_the_chat_template_off(tmp_path, capsys):
    """diff_natural's items are stored as chat transcripts (``<|im_start|>user ... <|im_start|>assistant``); with
    ``apply_chat_template: true``, written because the tokenizer has a template, lm-eval wrapped each one in a second
    template and the base scored 56% on query_classification instead of 100%, a +19-point "gain" the fine-tune never
    had. The natural pair, copied to plain folders, as a user brings it."""
    import shutil

    from lm_diff.config import from_dict
    from lm_diff.run.pipeline import warn_chat_rendered

    src = Path(__file__).resolve().parents[1] / "lm_diff" / "data" / "organisms" / "natural"
    for name in ("base", "finetuned"):
        shutil.copytree(src / name, tmp_path / name)
    out = tmp_path / "pair.yaml"
    assert main(["init", str(tmp_path / "base"), str(tmp_path / "finetuned"), "--suite",
                 "diff_natural,diff_natural_probes", "--out", str(out), "--tokens", "500000"]) == 0
    text = out.read_text()
    data = yaml.safe_load(text)
    assert data["benchmarks"]["apply_chat_template"] is False
    assert "already carry the chat template ('<|im_start|>user' in diff_natural_safety_refusal" in text
    assert data["capture"]["context_length"] == 512  # the models' max_position_embeddings
    assert data["crosscoder"]["warmup_steps"] == 48 and data["crosscoder"]["dead_tokens"] == 250_000
    assert main(["config", str(out)]) == 0
    capsys.readouterr()
    # a config that turns the template on anyway is warned about at run time
    cfg = from_dict({**data, "benchmarks": {**data["benchmarks"], "apply_chat_template": True}}, where="t")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "base"))
    flagged = warn_chat_rendered(cfg, tok)
    # every category's task but code, whose items are plain Python
    assert len(flagged) == 10 and "diff_natural_query_classification_message_type" in flagged
    assert "diff_natural_code_python" not in flagged
    assert "wraps them in a second one" in " ".join(capsys.readouterr().err.split())
    # the probes (scored text, no prompt) and tasks whose items are plain text are not flagged
    probes = from_dict({**data, "benchmarks": {"tasks": ["diff_natural_probes"], "apply_chat_template": True}}, where="t")
    assert warn_chat_rendered(probes, tok) == []


def test_readme_bring_your_own_pair_commands_exist():
    """Every `lm-diff ...` command line of the README's "Bring your own pair" section parses with lm-diff's parser
    (command and flags exist), and each command's --help works."""
    import re
    import shlex
    from pathlib import Path

    from lm_diff.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Bring your own pair", 1)[1].split("\n## ", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in section.splitlines() if ln.startswith("lm-diff ")]
    lines += re.findall(r"`(lm-diff [^`]+)`", section)
    assert len(lines) >= 5
    parser = build_parser()
    commands = set()
    for line in lines:
        args = shlex.split(line)[1:]
        if len(args) == 1:  # a command named in the text, e.g. `lm-diff init`
            commands.add(args[0])
            continue
        commands.add(parser.parse_args(args).command)
    assert {"init", "config", "plan", "run", "report"} <= commands
    for cmd in commands:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([cmd, "--help"])
        assert exc.value.code == 0
