"""Captured prompts = scored prompts: lm_diff.bench.render renders an item as lm-eval scores it (chat, few-shot)."""

from __future__ import annotations

import json
import os

import pytest

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_k, _v)

from helpers import make_tokenizer  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402

from lm_diff.bench import suites  # noqa: E402
from lm_diff.bench.evaluate import find_run_files, run_lm_eval  # noqa: E402
from lm_diff.bench.render import PromptFormat, format_of, strip_bos  # noqa: E402
from lm_diff.config import BenchmarksConfig  # noqa: E402

TASK = """\
task: tiny_mc_capitals
output_type: multiple_choice
custom_dataset: !function lm_diff.bench.suites.load_split
dataset_kwargs:
  data_file: {data}
test_split: test
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
ROWS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"), ("Chile", "Santiago"),
        ("Japan", "Tokyo")]


class RecordingLM(LM):
    """An lm-eval model that answers every request with constants and renders chats with a real tokenizer."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-1.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return [-1.0 for _ in requests]

    def generate_until(self, requests, disable_tqdm=False):
        return ["" for _ in requests]

    @property
    def tokenizer_name(self) -> str:
        return "tiny"

    def chat_template(self, chat_template=False):
        return self.tokenizer.chat_template

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    data = root / "capitals.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is the capital of {c}?", "choices": [a, "London"], "gold": 0}) + "\n"
                            for c, a in ROWS))
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_mc_capitals.yaml").write_text(TASK.format(data=data))
    return {"root": root, "tasks": root / "tasks", "tok": make_tokenizer(chat_template=True)}


def test_captured_prompts_equal_scored_prompts_with_chat_template_and_fewshot(setup):
    bench = BenchmarksConfig(tasks=["tiny_mc_capitals"], num_fewshot=2, apply_chat_template=True, limit=4,
                             system_instruction="Answer briefly.")
    fmt = format_of(bench)
    assert fmt.fewshot_as_multiturn  # lm-eval 0.4.13 scores few-shot chat items as separate turns by default
    run = run_lm_eval("recording", bench.tasks, setup["root"] / "run", limit=bench.limit, num_fewshot=bench.num_fewshot,
                      apply_chat_template=True, system_instruction=bench.system_instruction,
                      include_path=[setup["tasks"]], model=RecordingLM(setup["tok"]), env_info=False)
    _, files = find_run_files(run)
    scored = {r["doc_id"]: r["arguments"]["gen_args_0"]["arg_0"] for r in map(json.loads, files["tiny_mc_capitals"].open())}
    tm = suites.task_manager([setup["tasks"]])
    captured = {p["doc_id"]: p["text"] for p in suites.task_prompts(bench.tasks, tm, limit=bench.limit, fmt=fmt,
                                                                     tokenizer=setup["tok"])}
    assert captured == scored and len(scored) == 4
    first = scored[0]
    assert first.count("<|user|>") == 3 and first.count("<|assistant|>") == 3  # 2 shots as turns + the question
    assert first.startswith("<bos><|system|>\nAnswer briefly.")
    assert strip_bos(first, setup["tok"]) == first[len("<bos>"):]  # capture adds the BOS itself: not doubled
    # the single-turn rendering (what capture used before) is a different text: the test can fail
    single = suites.task_prompts(bench.tasks, tm, limit=1, tokenizer=setup["tok"],
                                 fmt=PromptFormat(num_fewshot=2, apply_chat_template=True, fewshot_as_multiturn=False,
                                                  system_instruction="Answer briefly."))
    assert single[0]["text"] != first and single[0]["text"].count("<|user|>") == 1
