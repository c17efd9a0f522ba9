"""lm-diff plan: per-stage FLOPs / time / memory / disk from config.json only, checked against docs/gpu.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lm_diff.cli import main
from lm_diff.errors import UserError

DOC = (Path(__file__).resolve().parent.parent / "docs" / "gpu.md").read_text(encoding="utf-8")


def _doc_number(label: str) -> float:
    """The first number after ``label`` in docs/gpu.md (thousands separators allowed)."""
    m = re.search(re.escape(label) + r"[^0-9]*([0-9][0-9,]*(?:\.[0-9]+)?(?:e[0-9]+)?)", DOC)
    assert m, label
    return float(m.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "p.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["plan", "configs/gemma.yaml", "--json"]) == 0
    out.write_text(buf.getvalue())
    return json.loads(buf.getvalue())


def test_gemma_plan_matches_the_hand_calculation(gemma):
    st = {s["stage"]: s for s in gemma["stages"]}
    for s in gemma["stages"]:
        assert {"flops", "seconds", "device_memory_bytes", "host_memory_bytes", "disk_bytes"} <= set(s)
    assert gemma["architecture"]["layer_params"] == _doc_number("**layer:") == 198_180_864
    assert gemma["architecture"]["params"] == _doc_number("917,504,000 = **")
    cap = st["capture"]
    assert cap["flops_per_token_per_model"] == _doc_number("**capture FLOPs per token per model:")
    # ~ 2 FLOP per parameter up to layer 21: 8.7 GFLOP per token per model (+2 % attention scores)
    assert 2 * 22 * 198_180_864 == _doc_number("2 × 4,359,979,008 =")
    assert cap["flops"] == pytest.approx(_doc_number("models × 8,904,687,616 = **"), rel=1e-3)
    assert cap["seconds"] == pytest.approx(_doc_number("5.343e17 / 3.956e14 = **"), rel=1e-3)
    assert cap["store_bytes"] == _doc_number("**store: 20,000,000 × 21,522 =")
    assert cap["device_memory_bytes"] == _doc_number("**capture device memory:")
    train = st["train PA seed 0"]
    assert train["flops_per_token"] == _doc_number("**dense: 10MDL =")
    assert train["flops_per_token_sparse_decoder"] == _doc_number("4MDL + 6kMD = **")
    assert train["device_memory_bytes"] == _doc_number("**training device memory:") == 30_066_720_768
    assert train["seconds"] == pytest.approx(3.367e17 / (989e12 * 0.4), rel=1e-3)  # docs/gpu.md: 851 s
    assert len([s for s in st if s.startswith("train")]) == 7 and "diff" in st and "benchmarks" in st
    assert gemma["accelerator"]["peak_bf16_flops"] == 989e12 and gemma["accelerator"]["utilisation"]["forward"] == 0.4
    assert gemma["fits_device_memory"]


def test_plan_other_gpus_local_dirs_and_errors(tmp_path, capsys):
    from lm_diff.config import load_config
    from lm_diff.run.plan import plan

    cfg = load_config("gemma")
    h100, a100 = plan(cfg, "h100"), plan(cfg, "a100")
    assert a100["stages"][1]["seconds"] == pytest.approx(h100["stages"][1]["seconds"] * 989 / 312)
    assert not plan(cfg, "l4")["fits_device_memory"]
    # a local model directory's config.json; the demo organisms ship theirs
    demo = plan(load_config("demo"), "cpu")
    assert demo["architecture"]["hidden"] == 96 and demo["stages"][1]["flops"] > 0
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 4,
                                                      "num_attention_heads": 2, "intermediate_size": 128,
                                                      "vocab_size": 1000, "model_type": "llama"}))
    with pytest.raises(UserError, match="out of range"):  # layer 21 of gemma.yaml does not exist in 4 layers
        plan(cfg, "cpu", model_config=str(tmp_path / "config.json"))
    small = plan(load_config("gemma", overrides={"layers": ["middle"]}), "cpu", model_config=str(tmp_path))
    assert small["architecture"]["layers_captured"] == [2] and small["stages"][1]["layers_run"] == 3
    with pytest.raises(UserError, match="--model-config"):
        plan(load_config("gemma", overrides={"models.anchor": "someone/unknown"}), "h100")
    assert main(["plan", "configs/gemma.yaml", "--gpu", "h200"]) == 0
    text = capsys.readouterr().out
    assert "capture" in text and "989 TFLOP/s" in text and "utilisation" in text


def test_cli_gpu_choices_are_the_planned_accelerators():
    from lm_diff.cli import build_parser
    from lm_diff.run.plan import ACCELERATORS

    plan_parser = build_parser()._subparsers._group_actions[0].choices["plan"]
    gpu = next(a for a in plan_parser._actions if a.dest == "gpu")
    assert set(gpu.choices) == set(ACCELERATORS)


def _chars(texts) -> int:
    return sum(len(t) for t in texts)


def test_plan_counts_the_perplexity_probes_where_the_suite_reaches_them():
    """The benchmark stage counts the probes' scored text (characters / 4, one rolling request per document) when the
    suite includes diff_probes directly or through a group (diff_gemma, diff_leaderboard), and nothing for them
    otherwise; the accuracy tasks' rows count as before."""
    from lm_diff.bench.paths import data_root
    from lm_diff.bench.probes import probe_rows
    from lm_diff.categorize.taxonomy import get_taxonomy
    from lm_diff.config import load_config
    from lm_diff.run.plan import plan

    cats = [c.name for c in get_taxonomy()]
    probe = {c: [r["text"] for r in probe_rows(c)] for c in cats}
    probe_chars, probe_docs = _chars(t for c in cats for t in probe[c]), sum(len(v) for v in probe.values())
    gemma_rows = (data_root() / "diff_gemma" / "self_reference.jsonl").read_text(encoding="utf-8").splitlines()
    demo_rows = [line for f in sorted((data_root() / "diff_demo").glob("*.jsonl"))
                 for line in f.read_text(encoding="utf-8").splitlines()]

    def bench(**overrides) -> dict:
        return plan(load_config("demo", overrides=overrides), "cpu")["stages"][0]

    demo = bench()
    assert demo["stage"] == "benchmarks" and demo["probe_tokens_per_model"] == demo["probe_documents"] == 0
    assert demo["tokens_per_model"] == _chars(demo_rows) // 4 > 0
    for tasks in (["diff_gemma"], ["diff_demo", "diff_gemma", "diff_probes"]):  # nested; a leaf counted once
        b = bench(**{"benchmarks.tasks": tasks})
        assert b["probe_tokens_per_model"] == probe_chars // 4 > 0 and b["probe_documents"] == probe_docs > 100
        extra = demo_rows if "diff_demo" in tasks else []
        assert b["tokens_per_model"] == (_chars(gemma_rows) + _chars(extra) + probe_chars) // 4
    lb = bench(**{"benchmarks.tasks": ["diff_leaderboard"]})  # upstream tasks count 0, its diff_probes does not
    assert lb["tokens_per_model"] == lb["probe_tokens_per_model"] == probe_chars // 4
    assert lb["flops"] == pytest.approx(demo["flops"] * lb["tokens_per_model"] / demo["tokens_per_model"])
    one = bench(**{"benchmarks.tasks": ["diff_demo", "diff_probe_math"], "benchmarks.limit": 3})
    assert one["probe_documents"] == 3 and one["probe_tokens_per_model"] == _chars(probe["math"][:3]) // 4
    assert bench(**{"benchmarks.tasks": ["diff_gemma_self_reference"]})["probe_tokens_per_model"] == 0
    for family in ("demo", "natural"):  # the organisms' opt-in probe groups
        organism = bench(**{"benchmarks.tasks": [f"diff_{family}", f"diff_{family}_probes"]})
        assert organism["probe_documents"] == 11 * 16 and organism["probe_tokens_per_model"] > 0
