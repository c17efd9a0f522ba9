"""configs/gemma.yaml: the seed set-up, dry-run on random-init Gemma-2 models of tiny size (no downloads)."""

from __future__ import annotations

import json

import pytest
from helpers import make_tiny_model, make_tokenizer

from lm_diff.config import load_config
from lm_diff.errors import UserError

pytestmark = pytest.mark.slow


def test_gemma_config_is_the_seed_setup():
    cfg = load_config("gemma")
    assert cfg.design == "anchored"
    assert (cfg.models.anchor, cfg.models.base, cfg.models.finetuned) == (
        "google/gemma-2-9b", "google/gemma-2-9b-it", "princeton-nlp/gemma-2-9b-it-SimPO")
    assert cfg.layers == [21] and cfg.crosscoder.dict_size == 32 * 3584 and cfg.crosscoder.k == 100
    assert cfg.benchmarks.tasks == ["diff_gemma"]
    assert not cfg.models.trust_remote_code


def test_gemma_hub_corpus_offline_is_one_clear_error():
    from lm_diff.capture.corpus import read_source

    cfg = load_config("gemma")
    with pytest.raises(UserError, match="could not open dataset 'HuggingFaceFW/fineweb'"):
        read_source(cfg.capture.corpus[0], None, 1000, where="capture.corpus[0]")


UNSAFE_TASK = """\
task: tiny_code_exec
output_type: generate_until
unsafe_code: true
custom_dataset: !function lm_diff.bench.suites.load_split
dataset_kwargs:
  data_file: {data}
test_split: test
doc_to_text: prompt
doc_to_target: answer
generation_kwargs: {{until: ["\\n"], max_gen_toks: 4, do_sample: false}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0, category: code}}
"""


def test_gemma_anchored_dry_run_on_random_init_gemma2(tmp_path):
    """The anchored pipeline (P, A, B) end to end on three random-init Gemma2 models with the gemma.yaml settings
    scaled down: the same code path a real run takes, minus the hub. The suite holds a local code task marked
    ``unsafe_code`` (as diff_gemma's mbpp / humaneval, whose hub datasets are not here): without
    ``benchmarks.confirm_run_unsafe_code`` the run stops at the benchmarks with one message naming the switch and no
    finished stage; with it the task runs and reaches the report."""
    from lm_diff.run.pipeline import run

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"def f{i}():", "answer": " pass"}) + "\n" for i in range(3)))
    (tasks / "tiny_code_exec.yaml").write_text(UNSAFE_TASK.format(data=data))
    tok = make_tokenizer(tmp_path / "tok")
    paths = {}
    for name, seed in (("pt", 0), ("it", 1), ("simpo", 2)):
        make_tiny_model("gemma2", seed=seed, layers=4, hidden=64, out=tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    cfg = load_config("gemma", overrides={
        "models.anchor": paths["pt"], "models.base": paths["it"], "models.finetuned": paths["simpo"],
        "models.dtype": "float32", "models.device": "cpu", "layers": ["middle"],
        "capture.corpus": [{"path": "organisms:neutral"}, {"path": "organisms:mix", "chat": True}],
        "capture.context_length": 64, "capture.max_tokens": 60000, "capture.batch_size": 16,
        "capture.shard_tokens": 16384,
        "crosscoder.dict_size": 128, "crosscoder.k": 8, "crosscoder.steps": 30, "crosscoder.warmup_steps": 5,
        "crosscoder.batch_size": 256, "crosscoder.dead_tokens": 20000, "crosscoder.lr": 0.002,
        "diff.scaling_tokens": 20000, "diff.top_examples": 5,
        "benchmarks.tasks": ["diff_demo", "tiny_code_exec"], "benchmarks.limit": 3,
        "benchmarks.apply_chat_template": False, "benchmarks.batch_size": 16, "benchmarks.include_path": [str(tasks)],
        "stats.bootstrap": 50, "stats.permutations": 50, "controls.seeds": [0], "controls.causal": False,
        "categories.grounding_per_category": 8,  # the real-language set (a non-organism pair), trimmed to fit
    })
    with pytest.raises(UserError, match=r"task tiny_code_exec .*benchmarks.confirm_run_unsafe_code: true"):
        run(cfg, tmp_path / "refused")
    assert not list((tmp_path / "refused" / "stages").glob("*/DONE.json"))
    cfg.benchmarks.confirm_run_unsafe_code = True
    report = run(cfg, tmp_path / "run")
    assert report["schema"] == "lm_diff.report/v2"
    assert "tiny_code_exec" in json.dumps(report["tasks"])
    stages = tmp_path / "run" / "stages"
    quality = json.loads((next(stages.glob("quality-*")) / "quality.json").read_text())
    assert set(quality["crosscoders"]) == {"PA", "PB"}
    assert set(quality["models"]) == {"P", "A", "B"}
    for role in ("A", "B"):
        assert 0 <= quality["models"][role]["l0"] <= 64
    assert "identity" in json.loads((next(stages.glob("controls-*")) / "controls.json").read_text())
    assert {c["name"] for c in report["categories"]} >= {"safety", "multilingual", "code"}
    assert (tmp_path / "run" / "report.html").exists()
