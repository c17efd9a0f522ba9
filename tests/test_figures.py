"""lm_diff.dev.figures: README tables from a small synthetic run (hand-written report.json and stage folders)."""

import json
import os

import pytest

from lm_diff.dev import figures
from lm_diff.errors import UserError

FOUNDATION = {"lm_diff", "lm_diff.config", "lm_diff.errors", "lm_diff.io", "lm_diff.stats", "lm_diff.console",
              "lm_diff.plugins", "lm_diff.dev"}


def _category(name, planted, shift=None, gap=None, **extra):
    return {"name": name, "planted_sign": planted, "latent_shift": shift, "score_gap": gap, **extra}


def _report(finetuned="organisms://demo/finetuned", q_safety=0.01):
    return {
        "schema": "lm_diff.report/v1",
        "generated_at": "2026-01-02T03:04:05+00:00",
        "run": {"config": {"models": {"base": "organisms://demo/base", "finetuned": finetuned},
                           "stats": {"confidence": 0.95}},
                "inputs": {"diff": "runs/x/stages/diff-bbbb"}, "timings": {"total": 12.34}},
        "quality": {"models": {"A": {"ev": 0.91234, "l0": 15.71, "dead_fraction": 0.08, "delta_ce": 0.114,
                                     "delta_ce_web": 0.2, "delta_ce_chat": 0.028, "kl": 0.1874},
                               "B": {"ev": 0.9, "l0": 15.0, "dead_fraction": 0.5, "delta_ce": 0.3, "kl": None}},
                    "gates": [{"model": "A", "metric": "ev", "passed": True},
                              {"model": "B", "metric": "delta_ce", "passed": False},
                              {"model": "A,A", "metric": "identity_control", "passed": True}]},
        "overall": {"delta": 22.306, "ci_low": 21.34, "ci_high": 23.28},
        "selection_counts": {"B_selected": 68, "A_selected": 94, "removed_by_latent_scaling": 60},
        "categories": [
            _category("safety", 1,
                      {"share_ratio": 1.4279, "ci_low": 0.2259, "ci_high": 4.5312, "q_value": q_safety,
                       "q_linked": 0.0099, "n_S": 42.0, "n_T": 21.0, "insufficient": False, "mds_up": 2.36,
                       "mds_down": None},
                      {"delta": 100.0, "ci_low": 100.0, "ci_high": 100.0},
                      agreement=True, seed_signs={"n": 3, "positive": 3, "negative": 0},
                      causal={"fraction": 0.875, "random_fraction": 0.0},
                      latent_change={"ratio": 4.67, "ci_low": 2.1, "ci_high": None, "q": 0.0014, "mds": 1.2,
                                     "n_specific": 6, "n_shared": 10, "insufficient": False}),
            _category("code", -1,
                      {"share_ratio": -0.6421, "ci_low": None, "ci_high": None, "q_value": 0.2, "n_S": 3.0,
                       "n_T": 1.0, "insufficient": True},
                      {"delta": -87.5, "ci_low": -93.75, "ci_high": -80.0},
                      agreement=None, seed_signs={"n": 3, "positive": 1, "negative": 2},
                      causal={"fraction": -0.001, "random_fraction": 0.0},
                      latent_change={"ratio": None, "q": None, "insufficient": True}),
            _category("math", 0),
        ],
        "tasks": [{"name": "t_code", "category": "code", "metric": "acc", "n": 80, "score_a": 100.0, "score_b": 12.5,
                   "delta": -87.5, "ci_low": -93.75, "ci_high": -80.0}],
    }


def _stage(root, name, done, key=None, mtime=None):
    d = root / "stages" / name
    d.mkdir(parents=True)
    (d / "DONE.json").write_text(json.dumps(done))
    if key is not None:
        (d / "KEY.json").write_text(json.dumps(key))
    if mtime is not None:
        os.utime(d / "DONE.json", (mtime, mtime))


def _run(tmp_path, name="demo", **kw):
    run = tmp_path / name
    run.mkdir()
    (run / "report.json").write_text(json.dumps(_report(**kw)))
    _stage(run, "train-old", {"seconds": 99.0, "steps": 5}, {"capture": "capture-aaaa"}, mtime=1_000)
    _stage(run, "eval-eeee", {"seconds": 1.0, "run": "runs/x/run"}, {"model": {"spec": "organisms://demo/base"}},
           mtime=1_500)
    _stage(run, "capture-aaaa", {"seconds": 9.19, "tokens": 120, "store": "runs/x/store"}, {"layer": 1}, mtime=2_000)
    _stage(run, "train-cccc", {"seconds": 7.0, "steps": 10, "seed": 0}, {"capture": "capture-aaaa"}, mtime=3_000)
    _stage(run, "diff-bbbb", {"seconds": 4.0, "S": 2, "T": 3},
           {"capture": "capture-aaaa", "crosscoders": {"AB": {"0": "train-cccc"}}, "evals": {"A": "eval-eeee"}}, mtime=4_000)
    return str(run)


def test_categories_table_matches_hand_formatted_rows(tmp_path):
    table = figures.table_categories([figures.load_run(_run(tmp_path))])
    assert table.splitlines() == [
        "| category | planted | changed, either way [CI] | q (changed) | detectable change "
        "| direction: share ratio S/T [CI] | q (all) | q linked | detectable ↑ / ↓ | n_S / n_T | seeds "
        "| Δscore [CI] | sign | causal: gap closed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| safety | + | +467 % [+210 %, unbounded] | 0.0014 | +120 % | +143 % [+23 %, +453 %] | 0.01 | 0.0099 "
        "| +236 % / none | 42 / 21 | 3/3 + | +100.0 [+100.0, +100.0] | agree | 88 % (random 0 %) |",
        "| code | - | insufficient | – | – | -64 % (insufficient) | 0.2 | – | – | 3 / 1 | 1 + / 2 - of 3 "
        "| -87.5 [-93.8, -80.0] | – | 0 % (random 0 %) |",
        "| math | 0 | – | – | – | – | – | – | – | – | – | – | – | – |",
    ]


def test_quality_tasks_and_runs_tables(tmp_path):
    demo = figures.load_run(_run(tmp_path))
    null = figures.load_run(_run(tmp_path, "null", finetuned="organisms://demo/null", q_safety=0.3))
    quality = figures.table_quality([demo]).splitlines()
    assert quality[2] == "| A | 0.912 | 15.7 | 8 % | 0.114 (0.200 / 0.028) | 0.187 | pass |"
    assert quality[3] == "| B | 0.900 | 15.0 | 50 % | 0.300 | – | fail: delta_ce |"
    assert quality[4] == "| A,A | – | – | – | – | – | identity_control: pass |"
    assert figures.table_tasks([demo]).splitlines()[2] == "| t_code | code | acc | 80 | 100.0 | 12.5 | -87.5 [-93.8, -80.0] |"
    runs = figures.table_runs([demo, null]).splitlines()
    assert "significant (q all < 0.05)" in runs[0]
    assert runs[2].split(" | ")[1:] == ["organisms://demo/finetuned", "68 / 94", "60", "safety", "0.2 (code)",
                                        "+22.3 [+21.3, +23.3]", "12 |"]
    assert runs[3].split(" | ")[4:6] == ["none", "0.2 (code)"]


def test_timings_keep_only_the_stages_behind_the_report(tmp_path):
    rows = figures.table_timings([figures.load_run(_run(tmp_path))]).splitlines()[2:]
    assert [r.split(" | ")[1] for r in rows] == ["`eval-eeee`", "`capture-aaaa`", "`train-cccc`", "`diff-bbbb`",
                                                 "wall time of the run"]
    assert rows[0] == "| eval | `eval-eeee` | 1.0 | model organisms://demo/base |"
    assert rows[1] == "| capture | `capture-aaaa` | 9.2 | tokens 120 |"  # paths and seconds are not "what"
    assert rows[-1].startswith("| **total** | wall time of the run | 12.3 |")


def test_readme_blocks_rewritten_text_outside_untouched_and_idempotent(tmp_path, capsys):
    run = _run(tmp_path)
    before, middle, after = "# Title\n\nIntro | with a pipe.\n", "\n\nBetween the blocks.\n", "\n\nTail  \n"
    readme = tmp_path / "README.md"
    readme.write_text(before + "<!-- figures:categories:begin -->\nold numbers 1.23\n<!-- figures:categories:end -->"
                      + middle + "<!-- figures:runs:begin --><!-- figures:runs:end -->" + after)
    assert figures.main([run, "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text
    assert text.startswith(before + "<!-- figures:categories:begin -->\n")
    assert middle + "<!-- figures:runs:begin -->\n" in text and text.endswith("<!-- figures:runs:end -->" + after)
    assert f"*Generated by `python -m lm_diff.dev.figures {run}` (`make figures`) from `{run}` (report of " \
           "2026-01-02T03:04:05+00:00, stage `diff-bbbb`).*" in text
    assert "| safety | + | +467 % [+210 %, unbounded] | 0.0014 | +120 % | +143 %" in text
    assert "| `" + run + "` | organisms://demo/finetuned |" in text
    assert "rewrote categories, runs" in capsys.readouterr().out
    assert figures.main([run, "--readme", str(readme)]) == 0
    assert readme.read_text() == text
    assert "unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("body, message", [
    ("<!-- figures:nope:begin --><!-- figures:nope:end -->", "unknown figure 'nope'"),
    ("<!-- figures:runs:begin -->\n", "is never closed"),
    ("<!-- figures:runs:end -->", "without a matching"),
    ("<!-- figures:runs:begin --><!-- figures:tasks:begin -->", "inside the open block 'runs'"),
    ("no markers at all", "has no figure blocks"),
])
def test_bad_markers_are_user_errors(tmp_path, body, message):
    with pytest.raises(UserError, match=message):
        figures.rewrite(body, [figures.load_run(_run(tmp_path))])


def test_missing_run_exits_2_with_a_fix(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- figures:runs:begin --><!-- figures:runs:end -->")
    assert figures.main([str(tmp_path / "nothing"), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "has no report.json" in err and "make demo" in err
    assert readme.read_text() == "<!-- figures:runs:begin --><!-- figures:runs:end -->"


def test_result_tables_read_the_saved_outputs(tmp_path):
    """The GPU and plan tables come from the saved command outputs; a skipped GPU run is refused, not printed."""
    import json as _json

    from lm_diff.dev import results
    from lm_diff.errors import UserError

    bench = {"skipped": False, "device_name": "GPU-X", "torch": "t",
             "matmul": {"bf16_tflops": 700.0},
             "capture": {"two_full_forwards_tok_s": 100, "batch": "1x8", "params_per_model_b": 2.6, "layer": 13,
                         "capture_gpu_tok_s": 250, "ratio_gpu": 2.5, "capture_host_tok_s": 240, "peak_gib": 1.0,
                         "capture_store": {"tok_s": 50, "tokens": 64}},
             "train": {"shape": "M=2", "bf16_tok_s": 1000, "bf16_step_ms": 1.5, "bf16_frac_of_bf16_matmul": 0.436,
                       "flop_convention": "10*B*M*D*L", "peak_gib": 2.0, "fp32_tok_s": 10, "fp32_step_ms": 9.0,
                       "fp32_frac_of_fp32_matmul": 0.9},
             "trainer": {"tok_s_incl_save": 900, "steps": 30, "peak_gib": 2.1}}
    (tmp_path / "bench_gpu.log").write_text("a table\n" + _json.dumps(bench) + "\n")
    (tmp_path / "gpu_smoke.log").write_text(_json.dumps({"ok": True, "checks": {"finite": True}, "run": {}}) + "\n")
    text = results.table_gpu(tmp_path)
    assert "GPU-X" in text and "250 tok/s" in text and "0.44 of the bf16 matmul rate" in text and "| ok |" in text
    (tmp_path / "bench_gpu.log").write_text(_json.dumps({"skipped": True}) + "\n")
    with pytest.raises(UserError, match="skipped"):
        results.table_gpu(tmp_path)
    plan = {"config": "c", "accelerator": {"description": "H", "peak_bf16_flops": 1e15, "peak_fp32_flops": 6e13,
                                           "utilisation": {"train": 0.4}},
            "stages": [{"stage": "capture", "flops": 5e17, "seconds": 1350.0, "device_memory_bytes": 2e10,
                        "host_memory_bytes": 9e9, "disk_bytes": 4.3e11}],
            "total": {"flops": 5e17, "seconds": 1350.0, "device_memory_bytes": 2e10, "host_memory_bytes": 9e9,
                      "disk_bytes": 4.3e11}}
    (tmp_path / "plan_gemma.json").write_text(_json.dumps(plan, indent=2))
    text = results.table_plan(tmp_path)
    assert "| capture | 5e+17 | 22.5 min | 20.0 GB | 9.0 GB | 430.0 GB |" in text and "train 40%" in text


def test_compare_reports_ignores_time_and_paths_only():
    from lm_diff.dev.compare_reports import compare

    a = {"generated_at": "t1", "run": {"out": "/work/x/runs/demo/stages/a"}, "q": 0.1 + 0.2, "n": [1, 2], "s": "x"}
    b = {"generated_at": "t2", "run": {"out": "/tmp/y/runs/demo/stages/b"}, "q": 0.3, "n": [1, 2], "s": "x"}
    diffs, close = compare(a, b)
    assert diffs == [] and len(close) == 1
    diffs, _ = compare(a, {**b, "n": [1, 3], "extra": 1})
    assert ("/n[1]", 2, 3) in diffs and ("/extra", "only in the second") in diffs


def test_train_table_reads_the_benchmark_and_states_a_missed_target(tmp_path):
    import json as _json

    from lm_diff.dev import results

    def variant(ms, frac, speed, target=None, ref=None):
        e = {"ms": ms, "matmul_fraction": frac, "speedup_vs_reference": speed, "steps": 30, "dropped": 1}
        if target:
            e |= {"target_speedup": target, "reference_ms": ref}
        return e

    bench = {"config": {"models": 2, "d_model": 256, "dict_size": 4096, "batch": 1024, "k": 32, "dtype": "fp32",
                        "threads": 2, "device": "cpu"}, "matmul_2048_ms": 90.0, "ok": False, "gpu": "none",
             "variants": {"batchtopk": variant(50.0, 2.6, 5.46, 2.5, 273.0),
                          "batchtopk_aux": variant(120.0, 1.2, 3.14, 1.5, 377.0),
                          "l1": variant(160.0, 0.9, 1.22, 1.3, 196.0),
                          "batchtopk_dense": variant(150.0, 0.95, 1.82)},
             "scaling": [{"d_model": 512, "dict_size": 16384, "ms": 440.0, "tokens_per_s": 2327,
                          "matmul_fraction": 2.5}]}
    (tmp_path / "bench_train.log").write_text("rows\n" + _json.dumps(bench) + "\n")
    text = results.table_train(tmp_path)
    assert "| L1 | 196 | 175 (0.85) | 160.0 (0.90) → 1.22× | ≥ 1.3× (missed by 0.08×) |" in text
    assert "50.0 (2.60) → 5.46× (dense kernels side by side: 150.0, 0.95) | ≥ 2.5× |" in text
    assert "| 512 | 16384 | 440.0 | 2327 | 2.50 |" in text and "4 of 120 timed steps dropped" in text
    assert "a target missed" in text


def test_recovery_table_has_one_block_per_family_log(tmp_path):
    """The recovery table reads the demo's and the natural family's logs (run apart, ~30 min each), states each
    file's missed targets, and names a missing log with the command that writes it."""
    import json as _json

    from lm_diff.dev import results
    from lm_diff.errors import UserError

    with pytest.raises(UserError, match="recovery.log is missing"):
        results.table_recovery(tmp_path)

    def family(name, hits, ok):
        cat = {"planted_sign": 1, "q": [0.004, 0.02], "ratio": [1.5, 0.9], "hits": hits,
               "q_spread": {"min": 0.004, "median": 0.012, "max": 0.02},
               "ratio_spread": {"min": 0.9, "median": 1.2, "max": 1.5}, "mds": None, "direction_hits": 1,
               "direction_ratio_spread": {"min": -0.5, "median": -0.2, "max": 0.1}}
        fam = {"family": name, "reruns": 2, "null_reruns": 1, "categories": {"math": cat},
               "null_false_positives": {}, "identity_specific": [0, 0, 0], "full_run_s": 190.0,
               "full_run_cold": name == "natural"}
        return {"families": [fam], "settings": [], "ok": ok,
                "failures": [] if ok else [f"{name}: planted math (+) found in {hits} of 2 reruns (target >= 2)"]}

    (tmp_path / "recovery.log").write_text("table\n" + _json.dumps(family("demo", 1, False)) + "\n")
    only_demo = results.table_recovery(tmp_path)
    assert "**demo**" in only_demo and "**natural**" not in only_demo
    (tmp_path / "recovery_natural.log").write_text(_json.dumps(family("natural", 2, True)) + "\n")
    text = results.table_recovery(tmp_path)
    assert text.index("**demo**") < text.index("**natural**")
    assert "`recovery.log`, the default configuration; targets missed: demo: planted math (+) found in 1 of 2" in text
    assert "`recovery_natural.log`, the default configuration; every target met" in text
    assert ("| math | gain | found in 2 of 2 | 0.012 [0.004, 0.020] | +120 % [+90 %, +150 %] | – | right sign in 1 of 2 "
            "| -20 % [-50 %, +10 %] |") in text
    assert "first full run 3.2 min (cold)" in text
    assert "(its folder was reused: not a cold time)" in only_demo
