"""lm_diff.bench.evaluate: run_lm_eval writes what `lm_eval --output_path --log_samples` writes; find_run_files reads both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_k, _v)

from helpers import make_tiny_model, make_tokenizer  # noqa: E402

from lm_diff.bench import suites  # noqa: E402
from lm_diff.bench.evaluate import find_run_files, run_lm_eval, write_run  # noqa: E402
from lm_diff.errors import UserError  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lm_eval_runs"

GEN_TASK = """\
task: tiny_gen_echo
output_type: generate_until
custom_dataset: !function lm_diff.bench.suites.load_split
dataset_kwargs:
  data_file: {data}
test_split: test
doc_to_text: prompt
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_DATASETS_CACHE")}
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf" / "datasets")
    model = root / "model"
    make_tokenizer(model)
    make_tiny_model("gemma2", seed=0, out=model)
    data = root / "gen.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}:", "answer": f" {i}"}) + "\n" for i in range(3)))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny_gen_echo.yaml").write_text(GEN_TASK.format(data=data))
    yield {"root": root, "model": model, "tasks": tasks}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


TASKS = ["diff_gemma_self_reference", "tiny_gen_echo"]


@pytest.fixture(scope="module")
def run_dir(env):
    return run_lm_eval(str(env["model"]), TASKS, env["root"] / "run", limit=3, batch_size=4,
                       include_path=[env["tasks"]])


def test_run_lm_eval_writes_results_and_samples(run_dir, env):
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "results.json", "samples_diff_gemma_self_reference_identity.jsonl", "samples_tiny_gen_echo.jsonl"]
    res = json.loads((run_dir / "results.json").read_text())
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples", "config", "task_hashes"):
        assert key in res, key
    assert set(res["configs"]) == {"diff_gemma_self_reference_identity", "tiny_gen_echo"}
    assert res["group_subtasks"]["diff_gemma_self_reference"] == ["diff_gemma_self_reference_identity"]
    assert "acc,none" in res["results"]["diff_gemma_self_reference"]  # per-category aggregate
    assert res["config"]["limit"] == 3
    rows = [json.loads(line) for line in (run_dir / "samples_diff_gemma_self_reference_identity.jsonl").open()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2]
    r = rows[0]
    assert set(r) >= {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                      "doc_hash", "prompt_hash", "target_hash", "acc"}
    assert isinstance(r["target"], str) and r["resps"][0][0][1] in ("True", "False")  # stringified like lm-eval
    assert list(r["arguments"]) == [f"gen_args_{i}" for i in range(len(r["doc"]["choices"]))]


def test_find_run_files_on_our_layout(run_dir):
    results, samples = find_run_files(run_dir)
    assert results == run_dir / "results.json"
    assert samples == {t: run_dir / f"samples_{t}.jsonl" for t in ("diff_gemma_self_reference_identity", "tiny_gen_echo")}
    assert find_run_files(results)[1] == samples


def test_same_shape_as_lm_eval_output_path(run_dir, env):
    """A plain simple_evaluate + EvaluationTracker run (what the CLI does) gives identical per-sample rows."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    out = env["root"] / "lm_eval_out"
    tracker = EvaluationTracker(output_path=str(out))
    tm = suites.task_manager([env["tasks"]])
    res = simple_evaluate(model="hf", model_args={"pretrained": str(env["model"]), "dtype": "float32"}, tasks=TASKS,
                          batch_size=4, device="cpu", limit=3, log_samples=True, task_manager=tm,
                          evaluation_tracker=tracker)
    samples = res.pop("samples")
    tracker.save_results_aggregated(results=res, samples=samples)
    for task, rows in samples.items():
        tracker.save_results_samples(task_name=task, samples=rows)
    theirs_results, theirs = find_run_files(out)
    assert theirs_results.parent.parent == out and theirs_results.name.startswith("results_")
    ours_results, ours = find_run_files(run_dir)
    assert set(theirs) == set(ours)
    for task in ours:
        a = [json.loads(x) for x in ours[task].open()]
        b = [json.loads(x) for x in theirs[task].open()]
        assert a == b, task
    ra, rb = json.loads(ours_results.read_text()), json.loads(theirs_results.read_text())
    assert ra["task_hashes"] == rb["task_hashes"]
    assert ra["results"] == rb["results"]
    assert set(rb) - set(ra) <= {"model_source", "start_time", "end_time", "total_evaluation_time_seconds",
                                 "model_name", "model_name_sanitized", "system_instruction", "system_instruction_sha",
                                 "fewshot_as_multiturn", "chat_template", "chat_template_sha"}


def test_task_prompts_equal_logged_contexts(run_dir, env):
    tm = suites.task_manager([env["tasks"]])
    prompts = suites.task_prompts(TASKS, tm, limit=3)
    _, files = find_run_files(run_dir)
    for task, f in files.items():
        logged = {r["doc_id"]: r["arguments"]["gen_args_0"]["arg_0"] for r in map(json.loads, f.open())}
        assert {p["doc_id"]: p["text"] for p in prompts if p["task"] == task} == logged
    assert {p["category"] for p in prompts} == {"self_reference", None}


def test_find_run_files_on_committed_lm_eval_fixture():
    if not FIXTURES.exists():
        pytest.skip("no lm-eval fixtures")
    results, samples = find_run_files(FIXTURES / "base")
    assert results.name.startswith("results_") and samples
    configs = json.loads(results.read_text())["configs"]
    assert set(samples) == set(configs)


def test_write_run_is_atomic(tmp_path, monkeypatch):
    import lm_diff.bench.evaluate as ev

    def boom(rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ev, "_sample_lines", boom)
    with pytest.raises(RuntimeError):
        write_run({"results": {}, "samples": {"t": [{"doc_hash": "a", "prompt_hash": "b", "target_hash": "c"}]}}, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "needs_defaults", lambda *a, **k: False)  # skip indexing lm-eval's 14k built-ins
    with pytest.raises(UserError, match="unknown lm-eval task"):
        run_lm_eval("/nonexistent", ["no_such_task_xyz"], tmp_path / "o")
    with pytest.raises(UserError, match="no results"):
        find_run_files(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Faults (docs/faults.md): one UserError each, nothing half-written


def _one_task_results() -> dict:
    return {"results": {}, "configs": {"t": {}}, "samples": {"t": [{"doc_hash": "a", "prompt_hash": "b", "target_hash": "c",
                                                                     "arguments": [], "resps": [], "filtered_resps": [],
                                                                     "target": "x"}]}}


def test_disk_full_is_one_user_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import lm_diff.bench.evaluate as ev

    def full(rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev, "_sample_lines", full)
    with pytest.raises(UserError, match="no space left on the disk holding .*out.*nothing was left behind") as ei:
        write_run(_one_task_results(), tmp_path / "out")
    assert ei.value.exit_code == 2 and list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_one_user_error(tmp_path, monkeypatch):
    import errno

    import lm_diff.io

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(lm_diff.io.tempfile, "mkdtemp", denied)
    with pytest.raises(UserError, match="cannot write the lm-eval run to .*Permission denied; choose a writable"):
        write_run(_one_task_results(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_uncached_hub_id_offline_names_it_and_the_variable(tmp_path, monkeypatch):
    from lm_diff.bench.evaluate import check_model_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(suites, "needs_defaults", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"'nobody/not-cached-xyz' is not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        run_lm_eval("nobody/not-cached-xyz", ["diff_gemma_self_reference"], tmp_path / "o")
    with pytest.raises(UserError, match="does not exist"):
        check_model_available(str(tmp_path / "no" / "such" / "model"))
    check_model_available(str(tmp_path))  # an existing directory is fine
    check_model_available("nobody/not-cached-xyz", backend="dummy")  # not a hub backend: not checked
    assert not (tmp_path / "o").exists()


def test_unsafe_code_task_needs_the_config_switch(tmp_path, env):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = env["root"] / "gen.jsonl"
    (tasks / "tiny_unsafe.yaml").write_text(GEN_TASK.format(data=data).replace("tiny_gen_echo", "tiny_unsafe")
                                            + "unsafe_code: true\n")
    with pytest.raises(UserError, match="task tiny_unsafe .*benchmarks.confirm_run_unsafe_code: true"):
        run_lm_eval("dummy", ["tiny_unsafe"], tmp_path / "o", limit=2, include_path=[tasks], backend="dummy",
                    env_info=False)
    out = run_lm_eval("dummy", ["tiny_unsafe"], tmp_path / "o", limit=2, include_path=[tasks], backend="dummy",
                      env_info=False, confirm_run_unsafe_code=True)
    assert len(find_run_files(out)[1]) == 1


@pytest.mark.parametrize("backend,extra", [
    ("vllm", {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8}),
    ("hf", {"parallelize": True}),
])
def test_backend_and_model_args_reach_simple_evaluate(tmp_path, monkeypatch, backend, extra):
    import lm_diff.bench.evaluate as ev
    from lm_diff.config import BenchmarksConfig

    seen = {}

    def fake_simple_evaluate(**kwargs):
        seen.update(kwargs)
        return _one_task_results()

    monkeypatch.setattr(ev, "simple_evaluate", fake_simple_evaluate)
    monkeypatch.setattr(suites, "needs_defaults", lambda *a, **k: False)
    b = BenchmarksConfig(tasks=["diff_gemma_self_reference"], model=backend, model_args=extra, limit=4,
                         confirm_run_unsafe_code=True)
    ev.run_configured(b, str(tmp_path), tmp_path / "run", device="cuda", dtype="bfloat16")
    assert seen["model"] == backend
    assert seen["model_args"] == {"pretrained": str(tmp_path), "dtype": "bfloat16", **extra}
    assert seen["limit"] == 4 and seen["device"] == "cuda" and seen["confirm_run_unsafe_code"] is True
    assert ev.model_arguments("m", "float32", {"dtype": "float16", "pretrained": "ignored"}) == {
        "pretrained": "m", "dtype": "float16"}


def test_reused_runs(tmp_path):
    from lm_diff.bench.evaluate import reused_runs

    runs = reused_runs({"A": str(FIXTURES / "base"), "B": str(FIXTURES / "finetuned")})
    assert runs == {"A": FIXTURES / "base", "B": FIXTURES / "finetuned"}
    with pytest.raises(UserError, match="benchmarks.reuse.B is missing"):
        reused_runs({"A": str(FIXTURES / "base")})
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps({"configs": {"t": {}}}))
    with pytest.raises(UserError, match="benchmarks.reuse.A: .*--log_samples"):
        reused_runs({"A": str(folder), "B": str(FIXTURES / "finetuned")})
    with pytest.raises(UserError, match=r"benchmarks.reuse.A: .*no such lm-eval run directory"):
        reused_runs({"A": str(tmp_path / "nope"), "B": str(FIXTURES / "finetuned")})


def test_benchmarks_config_checks_name_the_key():
    from lm_diff.config import ConfigError, RunConfig

    for change, key in (({"model_args": {"pretrained": "x"}}, "benchmarks.model_args.pretrained"),
                        ({"reuse": {"A": "a"}}, "benchmarks.reuse"), ({"model": " "}, "benchmarks.model")):
        cfg = RunConfig()
        for k, v in change.items():
            setattr(cfg.benchmarks, k, v)
        with pytest.raises(ConfigError, match=key):
            cfg.validate()
    RunConfig().validate()
