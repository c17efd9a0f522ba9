"""lm_diff.bench.suites, the diff_demo / diff_gemma task YAML, lm_eval_cli and the task-category plugin (all offline, fast)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_k, _v)

from lm_diff.bench import suites  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_INDEX = REPO / "lm_diff" / "data" / "diff_demo" / "index.json"
SELFREF = REPO / "lm_diff" / "data" / "diff_gemma" / "self_reference.jsonl"
needs_demo_data = pytest.mark.skipif(not DEMO_INDEX.exists(), reason="diff_demo data not generated yet")

# Upstream task directories the diff_gemma suite references (a sub-index is ~100x faster than all of lm_eval/tasks).
UPSTREAM_DIRS = ["ifeval", "truthfulqa", "belebele", "xnli", "mbpp", "humaneval", "gsm8k", "toxigen", "mmlu/default", "arc", "logiqa2"]
GEMMA_LEAVES = {
    "ifeval": "instruction_following",
    "truthfulqa_mc2": "hallucination",
    "mbpp": "code",
    "humaneval": "code",
    "gsm8k": "math",
    "toxigen": "safety",
    "diff_gemma_self_reference_identity": "self_reference",
    "mmlu_abstract_algebra": "knowledge",
    "arc_challenge": "reasoning",
    "logiqa2": "reasoning",
}
LEADERBOARD_LEAVES = {
    "leaderboard_mmlu_pro": "knowledge",
    "leaderboard_gpqa_diamond": "knowledge",
    "leaderboard_bbh_navigate": "reasoning",
    "leaderboard_musr_murder_mysteries": "reasoning",
    "leaderboard_math_algebra_hard": "math",
    "leaderboard_ifeval": "instruction_following",
}


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))


def _lm_eval_tasks() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _taxonomy_names() -> set[str]:
    from lm_diff.categorize.taxonomy import get_taxonomy

    return {c.name for c in get_taxonomy()}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# paths, loaders, scoring


def test_tasks_dir_is_repo_tasks_in_a_checkout():
    assert suites.tasks_dir() == REPO / "tasks"
    assert (suites.tasks_dir() / "diff_gemma" / "diff_gemma.yaml").is_file()


def test_load_split_accepts_metadata_kwargs_and_encodes_dicts(tmp_path, monkeypatch):
    rows = [
        {"id": "a", "prompt": "p1", "check": {"type": "contains", "text": "x"}, "category": "code"},
        {"id": "b", "prompt": "p2", "check": {"type": "json", "keys": ["k"]}, "category": "code"},
    ]
    _write(tmp_path / "s" / "g.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(suites.DATA_ENV, str(tmp_path))
    # lm-eval passes metadata (version, model_args such as pretrained) alongside dataset_kwargs
    ds = suites.load_split(data_file="s/g.jsonl", version=1.0, pretrained="/m", config_source="x.yaml")
    assert list(ds) == ["test"] and len(ds["test"]) == 2
    docs = list(ds["test"])
    assert isinstance(docs[0]["check"], str)
    assert [suites.decode_row(d)["check"] for d in docs] == [r["check"] for r in rows]  # no merged None keys
    with pytest.raises(suites.UserError, match="not found"):
        suites.load_split("s/missing.jsonl")


def test_process_generation_uses_organism_checks(monkeypatch):
    seen = {}

    def check(row, text):
        seen["row"] = row
        return text.strip() == row["check"]["answer"]

    monkeypatch.setattr(suites, "check", check)
    doc = {"id": "x", "prompt": "2+2=", "check": json.dumps({"answer": "4"})}
    assert suites.process_generation(doc, [" 4"]) == {"acc": 1.0}
    assert seen["row"]["check"] == {"answer": "4"}
    assert suites.process_generation(doc, ["5"]) == {"acc": 0.0}
    assert suites.process_generation(doc, [["4"]]) == {"acc": 1.0}


# ---------------------------------------------------------------------------------------------------------------------
# categories


def test_task_categories_precedence_tags_and_inline_groups(tmp_path, monkeypatch):
    d = tmp_path / "t"
    mc = "output_type: multiple_choice\ndataset_path: json\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a]\n"
    _write(d / "a.yaml", f"task: t_a\n{mc}")
    _write(d / "d.yaml", f"task: t_d\n{mc}")
    _write(d / "b.yaml", f"task: t_b\ntag: my_tag\n{mc}")
    _write(d / "c.yaml", f"task: t_c\ntag: my_tag\n{mc}metadata:\n  category: math\n")  # task-level declaration
    _write(d / "gsm.yaml", f"task: gsm8k_local\n{mc}")  # plugin pattern gsm8k_* -> math
    _write(d / "g_safety.yaml", "group: g_safety\ntask: [t_a, my_tag]\nmetadata: {category: safety}\n")
    _write(
        d / "g_top.yaml",
        "group: g_top\ntask:\n  - g_safety\n  - gsm8k_local\n  - group: inline_ml\n    task: [t_d]\n"
        "    metadata: {category: multilingual}\n",
    )
    tm = suites.task_manager(extra=[d])
    cats = suites.task_categories(["g_top"], tm)
    assert cats["t_a"] == "safety" and cats["t_b"] == "safety"
    assert cats["t_c"] == "math"  # declared on the task itself beats the enclosing group
    assert cats["gsm8k_local"] == "math"  # built-in plugin mapping
    assert cats["t_d"] == "multilingual"  # inline subgroup (lm-eval names it g_top::inline_ml) declares its own
    assert suites.task_categories(["g_top"], tm, overrides={"g_safety": "code"})["t_b"] == "code"
    assert suites.task_categories(["t_a"], tm) == {"t_a": "safety"}  # by name: the indexed group listing it
    assert suites.task_categories(["t_a"], tm, overrides={"t_a": "code"}) == {"t_a": "code"}
    _write(d / "e.yaml", f"task: t_e\n{mc}")
    assert suites.task_categories(["t_e"], suites.task_manager(extra=[d])) == {}  # undeclared, unmapped


def test_task_categories_surface_errors(tmp_path):
    d = tmp_path / "t"
    mc = "output_type: multiple_choice\ndataset_path: json\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a]\n"
    _write(d / "ok.yaml", f"task: t_ok\n{mc}metadata:\n  category: code\n")
    _write(d / "poem.yaml", f"task: t_poem\n{mc}metadata:\n  category: poetry\n")  # not in the taxonomy
    _write(d / "broken.yaml", f"task: t_broken\n{mc}doc_to_text: [unclosed\n")  # lm-eval skips what it cannot parse
    _write(d / "g_bad.yaml", "group: g_bad\ntask: [t_ok, t_gone]\n")  # lists a task the index lacks
    tm = suites.task_manager(extra=[d])
    assert suites.task_categories(["t_ok"], tm) == {"t_ok": "code"}
    with pytest.raises(suites.UserError, match=r"unknown tasks 't_typo', 't_broken'.*benchmarks\.include_path") as info:
        suites.task_categories(["t_ok", "t_typo", "t_broken"], tm)
    assert str(d) in str(info.value)  # names where it looked
    with pytest.raises(suites.UserError, match=r"group lists 't_gone'"):
        suites.task_categories(["g_bad"], tm)
    with pytest.raises(suites.UserError, match=r"task 't_poem' is mapped to category 'poetry' \(by metadata\.category of t_poem\)"):
        suites.task_categories(["t_poem"], tm)
    with pytest.raises(suites.UserError, match=r"'t_ok' is mapped to category 'cooking' \(by benchmarks\.task_categories\)"):
        suites.task_categories(["t_ok"], tm, overrides={"t_ok": "cooking"})
    assert suites.task_categories(["t_poem"], tm, taxonomy=["poetry"]) == {"t_poem": "poetry"}  # a configured taxonomy


def test_task_categories_from_a_results_file():
    """Task names read from a results file: tasks outside the index are known through its configs (declared
    category) and group_subtasks (enclosing group for overrides and the plugin mapping)."""
    tm = suites.task_manager()  # lm_diff's own tasks only: gsm8k and my_task are not indexed
    results = {
        "configs": {"my_task": {"task": "my_task", "metadata": {"category": "safety"}}, "gsm8k": {"task": "gsm8k"},
                    "sub_a": {"task": "sub_a"}, "plain": {"task": "plain"}},
        "group_subtasks": {"my_group": ["sub_a"]},
    }
    names = ["my_task", "gsm8k", "sub_a", "plain"]
    got = suites.task_categories(names, tm, {"my_group": "math"}, results=results)
    assert got == {"my_task": "safety", "gsm8k": "math", "sub_a": "math"}  # plain: known, no category -> left out
    with pytest.raises(suites.UserError, match=r"unknown task 'other'.*nor in the results file"):
        suites.task_categories(["other"], tm, results=results)


def test_builtin_task_category_plugin_is_registered():
    from lm_diff.plugins.manager import list_plugins

    names = {p["name"]: p["hooks"] for p in list_plugins()}
    assert "lm_diff_task_categories" in names["lm_diff.bench.categories"]
    mapping = suites.plugin_task_categories()
    assert set(mapping.values()) <= _taxonomy_names()
    assert suites.lookup_category("belebele_deu_Latn", mapping) == "multilingual"


# ---------------------------------------------------------------------------------------------------------------------
# diff_demo


@needs_demo_data
def test_committed_diff_demo_yaml_matches_index():
    assert suites.write_demo_yamls(check=True) == [], "run: python -m lm_diff.bench.suites write-yamls"


@needs_demo_data
def test_every_diff_demo_task_builds_offline():
    index = suites.demo_index()
    tm = suites.task_manager(include_defaults=False)
    loaded = tm.load(["diff_demo"])
    assert set(loaded["tasks"]) == {e["task"] for e in index}
    for e in index:
        task = loaded["tasks"][e["task"]]
        assert task.get_config("output_type") == e["output_type"]
        docs = list(task.eval_docs)
        assert docs, e["task"]
        task.fewshot_context(docs[0], num_fewshot=0)  # templates render
    cats = {e["category"] for e in index}
    assert set(loaded["groups"]) == {"diff_demo"} | {f"diff_demo_{c}" for c in cats}
    expected = {e["task"]: e["category"] for e in index}
    assert suites.task_categories(["diff_demo"], tm) == expected
    assert suites.task_categories(list(expected), tm) == expected  # leaf names alone (as in a results file)
    assert cats <= _taxonomy_names()


@needs_demo_data
def test_diff_demo_category_declared_once():
    for f in (REPO / "tasks" / "diff_demo").glob("*.yaml"):
        text = f.read_text()
        if f.stem.count("_") > 2 and "include:" in text:  # leaf
            assert "category" not in text, f


# ---------------------------------------------------------------------------------------------------------------------
# diff_gemma (upstream tasks need hub data: structure and index resolution only, plus the local probe task)


def _gemma_tm():
    up = _lm_eval_tasks()
    return suites.task_manager(extra=[up / d for d in UPSTREAM_DIRS])


def test_diff_gemma_structure_resolves_offline():
    tm = _gemma_tm()
    idx = tm.task_index
    top = idx["diff_gemma"].cfg
    assert top["task"] == [f"diff_gemma_{c}" for c in
                           ["instruction_following", "hallucination", "multilingual", "code", "math", "safety",
                            "self_reference", "knowledge", "reasoning"]] + ["diff_probes"]
    taxonomy = _taxonomy_names()
    for sub in top["task"][:-1]:
        cfg = idx[sub].cfg
        assert cfg["metadata"]["category"] in taxonomy
        for child in cfg["task"]:
            assert child in idx, f"{sub} references {child}, which lm-eval 0.4.13 does not define"
    cats = suites.task_categories(["diff_gemma"], tm)
    for leaf, cat in GEMMA_LEAVES.items():
        assert cats[leaf] == cat
    assert {c for t, c in cats.items() if t.startswith(("belebele_", "xnli_"))} == {"multilingual"}
    assert {c for t, c in cats.items() if t.startswith("mmlu_")} == {"knowledge"}
    assert {t: c for t, c in cats.items() if t.startswith("diff_probe_")} == {f"diff_probe_{c}": c for c in taxonomy}
    assert len(cats) == 7 + 10 + 57 + 2 + len(taxonomy)


def test_diff_leaderboard_maps_every_leaderboard_v2_task_offline():
    """Each Open LLM Leaderboard v2 task is in exactly one category group, and every leaf of lm-eval's own
    ``leaderboard`` group gets a category (resolution only: the task index, no dataset is built)."""
    tm = suites.task_manager(extra=[_lm_eval_tasks() / "leaderboard"])
    idx = tm.task_index
    top = idx["diff_leaderboard"].cfg["task"]
    assert top == [f"diff_leaderboard_{c}" for c in ["knowledge", "reasoning", "math", "instruction_following"]] + [
        "diff_probes"]
    top = top[:-1]
    listed = [t for sub in top for t in idx[sub].cfg["task"]]
    assert sorted(listed) == sorted(idx["leaderboard"].cfg["task"])  # the six v2 tasks, each once
    cats = suites.task_categories(["diff_leaderboard"], tm)
    for leaf, cat in LEADERBOARD_LEAVES.items():
        assert cats[leaf] == cat
    probe_tasks = {t for t in cats if t.startswith("diff_probe_")}
    assert len(probe_tasks) == len(_taxonomy_names())
    assert set(cats) - probe_tasks == set(suites.task_categories(["leaderboard"], tm,
                                                                 overrides={t: "knowledge" for t in cats}))
    assert set(cats.values()) <= _taxonomy_names()
    for f in (REPO / "tasks" / "diff_leaderboard").glob("*.yaml"):  # YAML only: no code, no data paths
        text = f.read_text()
        assert "!function" not in text and "data_file" not in text, f
        assert "# Why:" in text or f.stem == "diff_leaderboard", f


def test_diff_gemma_self_reference_task_builds():
    tm = suites.task_manager()
    loaded = tm.load(["diff_gemma_self_reference"])
    task = loaded["tasks"]["diff_gemma_self_reference_identity"]
    docs = list(task.eval_docs)
    rows = [json.loads(line) for line in SELFREF.read_text(encoding="utf-8").splitlines()]
    assert len(docs) == len(rows) >= 100
    assert all(0 <= d["gold"] < len(d["choices"]) for d in docs)
    prompts = suites.task_prompts(["diff_gemma_self_reference"], tm, limit=3)
    assert [p["doc_id"] for p in prompts] == [0, 1, 2]
    assert {p["category"] for p in prompts} == {"self_reference"}
    assert prompts[0]["text"] == docs[0]["query"]


def test_self_reference_set_is_large_unique_and_well_formed():
    """The project-written self-reference set: >= 100 items, each a question to the assistant about itself in the
    shared format (query "Question: ...\nAnswer:", 2-4 distinct choices with a leading space, gold in range)."""
    rows = [json.loads(line) for line in SELFREF.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    questions = [r["query"].lower().strip() for r in rows]
    assert len(set(questions)) == len(questions)
    for r in rows:
        assert set(r) == {"id", "query", "choices", "gold", "category"} and r["category"] == "self_reference", r
        assert r["query"].startswith("Question: ") and r["query"].endswith("?\nAnswer:"), r["id"]
        assert re.search(r"\b(you|your|yourself)\b", r["query"], re.I), r["id"]  # about the assistant itself
        assert 2 <= len(r["choices"]) <= 4 and len(set(r["choices"])) == len(r["choices"]), r["id"]
        assert all(c.startswith(" ") and c.strip() for c in r["choices"]), r["id"]
        assert isinstance(r["gold"], int) and 0 <= r["gold"] < len(r["choices"]), r["id"]


@pytest.mark.slow
def test_diff_gemma_names_exist_in_full_lm_eval_index():
    from lm_eval.tasks import TaskManager

    full = TaskManager(include_path=str(suites.tasks_dir()))  # what `lm_eval --tasks diff_gemma` indexes
    assert suites.task_categories(["diff_gemma"], full) == suites.task_categories(["diff_gemma"], _gemma_tm())
    assert not suites.needs_defaults(["diff_demo"]) if DEMO_INDEX.exists() else True
    assert suites.needs_defaults(["diff_gemma"])


# ---------------------------------------------------------------------------------------------------------------------
# lm-diff eval


def test_build_argv_injects_include_path():
    from lm_diff.bench.lm_eval_cli import build_argv

    assert build_argv(["--model", "hf", "--tasks", "x"], "/T") == ["run", "--model", "hf", "--tasks", "x",
                                                                  "--include_path", "/T"]
    assert build_argv(["ls", "tasks"], "/T") == ["ls", "tasks", "--include_path", "/T"]
    assert build_argv(["run", "--include_path=/U"], "/T") == ["run", "--include_path=/U"]
    assert build_argv(["--help"], "/T") == ["--help"]
    assert build_argv([], "/T") == []


def test_eval_cli_combines_user_include_path(tmp_path, monkeypatch, capsys):
    """`lm-diff eval validate` finds lm_diff's tasks and the user's own (lm-eval's flag takes only one directory)."""
    from lm_eval.tasks import TaskManager

    from lm_diff.bench import lm_eval_cli

    _write(tmp_path / "mine" / "t.yaml", "task: my_own_task\noutput_type: multiple_choice\ndataset_path: json\n")
    original = TaskManager.__init__
    seen = []

    def fast_init(self, *a, include_defaults=True, **kw):  # skip indexing lm-eval's 14k built-ins in a unit test
        seen.append(kw.get("include_path"))
        original(self, *a, include_defaults=False, **kw)

    monkeypatch.setattr(TaskManager, "__init__", fast_init)
    rc = lm_eval_cli.main(["validate", "--tasks", "diff_gemma_self_reference_identity,my_own_task",
                           "--include_path", str(tmp_path / "mine")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "All tasks found" in out
    assert seen[-1] == [str(suites.tasks_dir()), str(tmp_path / "mine")]
    assert TaskManager.__init__ is fast_init  # patch undone

    rc = lm_eval_cli.main(["validate", "--tasks", "diff_gemma_self_reference_identity"])
    assert rc == 0 and seen[-1] == [str(suites.tasks_dir())]
    assert lm_eval_cli.main(["validate", "--tasks", "no_such_task"]) == 1


def test_hf_diff_model_is_registered():
    from lm_eval.api.registry import get_model

    from lm_diff.bench.lm_eval_plugin import DiffHFLM

    assert get_model("hf-diff") is DiffHFLM
    import importlib

    import lm_diff.bench.lm_eval_plugin as plugin

    importlib.reload(plugin)  # re-registration is harmless
