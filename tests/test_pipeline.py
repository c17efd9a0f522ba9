"""`lm-diff run` end to end on the tiny organisms: report schema, stage caching and resumption, `lm-diff ci`."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from lm_diff.cli import main
from lm_diff.config import load_config
from lm_diff.run.pipeline import capture_key, run

pytestmark = pytest.mark.slow


DEVICE_MOVES: dict[str, set[str]] = {}
"""Stage name -> the devices its tensors and modules were moved to in the tiny run (``tiny_run`` records them)."""


def _device_of(args, kwargs):
    import torch

    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)):
            return torch.device(a).type
        if isinstance(a, torch.Tensor):
            return a.device.type
    return None


@pytest.fixture(scope="module")
def tiny_run(tiny_organisms, tmp_path_factory):
    """The tiny run with ``models.device: cpu`` set explicitly; every ``.to(...)`` of a tensor or module is recorded
    under the stage that made it (test_every_stage_moves_to_the_configured_device)."""
    import torch

    from lm_diff.run.stages import Stages

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny", overrides={"models.device": "cpu"})
    current: list[str] = ["(outside a stage)"]
    real_run, real_t, real_m = Stages.run, torch.Tensor.to, torch.nn.Module.to

    def stage_run(self, name, *a, **k):
        current.append(name)
        try:
            return real_run(self, name, *a, **k)
        finally:
            current.pop()

    def spy(real):
        def to(self, *args, **kwargs):
            dev = _device_of(args, kwargs)
            if dev is not None:
                DEVICE_MOVES.setdefault(current[-1], set()).add(dev)
            return real(self, *args, **kwargs)
        return to

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Stages, "run", stage_run)
        m.setattr(torch.Tensor, "to", spy(real_t))
        m.setattr(torch.nn.Module, "to", spy(real_m))
        report = run(cfg, out)
    return out, report


def test_every_stage_moves_to_the_configured_device(tiny_run):
    """``models.device: cpu`` given explicitly: every stage of this process that places models or activations
    (benchmarks, capture, diff, grounding, examples, quality, causal) moves them, and only to the CPU; no stage keeps
    a hard-coded device of its own. (Training runs in worker processes here, out of the spy's sight; that it reads
    the device: tests/test_device.py.)"""
    tiny_run
    assert {"eval", "capture", "diff", "grounding", "examples", "quality", "causal"} <= set(DEVICE_MOVES)
    assert {stage: devs for stage, devs in DEVICE_MOVES.items() if devs != {"cpu"}} == {}


def _stage_dirs(out: Path, name: str) -> list[Path]:
    return sorted((out / "stages").glob(f"{name}-*"))


def test_report_files_and_schema(tiny_run):
    out, report = tiny_run
    for name in ("report.json", "report.md", "report.html", "config.yaml"):
        assert (out / name).exists(), name
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == "lm_diff.report/v2"
    assert "quality" in data and "controls" in data
    names = {c["name"] for c in data["categories"]}
    assert {"safety", "multilingual", "instruction_following", "code", "math"} <= names
    for c in data["categories"]:
        assert {"name", "latent_shift", "score_gap", "agreement"} <= set(c)
        assert {"share_ratio", "count_ratio", "ci_low", "ci_high", "q_value"} <= set(c["latent_shift"])
        assert set(c["latent_change"]) == {"ratio", "ci_low", "ci_high", "p", "q", "mds", "n_specific", "n_shared",
                                           "insufficient"}, c["name"]
        lc = c["latent_change"]  # one-sided, like its test: a lower end, no upper
        assert lc["ci_high"] is None and (lc["ci_low"] is None or lc["ci_low"] <= (lc["ratio"] or 0) + 1e-9)
        if c["name"] in set(data["run"]["task_categories"].values()):  # a category with a task has a score gap
            assert {"delta", "ci_low", "ci_high"} <= set(c["score_gap"] or {}), c["name"]
    html = (out / "report.html").read_text()
    assert html.lower().count("<script") == 1  # the latent browser's own script; dataset text is escaped


def test_benchmark_gaps_show_every_planted_shift(tiny_run, tiny_organisms):
    """The benchmark half of the report recovers organism.json's truth: planted gains/losses significant with the
    right sign (CI excludes 0); unchanged categories never significant in the opposite direction of a plant."""
    _, report = tiny_run
    planted = json.loads((tiny_organisms / "organism.json").read_text())["planted"]
    gaps = {c["name"]: c["score_gap"] for c in report["categories"] if (c["score_gap"] or {}).get("delta") is not None}
    for cat, sign in planted.items():
        sign = sign if isinstance(sign, int) else sign.get("sign", 0)
        if sign == 0 or cat not in gaps:
            continue
        g = gaps[cat]
        if sign > 0:
            assert g["ci_low"] > 0, (cat, g)
        else:
            assert g["ci_high"] < 0, (cat, g)
    assert {c for c, s in planted.items() if s} <= set(gaps)


def test_latent_shifts_recover_planted_signs(tiny_run, tiny_organisms):
    """The latent half on the tiny organisms (dedicated latents, one seed): the strongest planted shifts (multilingual
    gain, code loss) have CIs that exclude no change, every planted category's share ratio has the planted sign, and
    no unplanted category is significant."""
    _, report = tiny_run
    planted = json.loads((tiny_organisms / "organism.json").read_text())["planted"]
    shifts = {c["name"]: c["latent_shift"] for c in report["categories"] if c["latent_shift"]}
    assert shifts["multilingual"]["ci_low"] > 0 and shifts["code"]["ci_high"] < 0, shifts
    for cat, sign in planted.items():
        ls = shifts[cat]
        if sign:
            ratio = ls["share_ratio"] if ls["share_ratio"] is not None else (math.inf if ls["n_S"] else -1.0)
            assert (ratio > 0) == (sign > 0), (cat, ls)
        else:
            assert ls["q_value"] is None or ls["q_value"] >= 0.05, (cat, ls)


def test_quality_controls_and_selection_recorded(tiny_run):
    out, report = tiny_run
    quality = json.loads((_stage_dirs(out, "quality")[0] / "quality.json").read_text())
    for role in ("A", "B"):
        q = quality["models"][role]
        assert 0 < q["ev"] <= 1 and q["l0"] > 0 and 0 <= q["dead_fraction"] <= 1
        assert math.isfinite(q["delta_ce"]) and math.isfinite(q["kl"]) and q["kl"] >= 0
    controls = json.loads((_stage_dirs(out, "controls")[0] / "controls.json").read_text())
    assert "identity" in controls and "selection" in controls
    sel = controls["selection"]["AB"]
    assert 0 <= sel["B_specific"] <= sel["B_delta_only"] and 0 <= sel["A_specific"] <= sel["A_delta_only"]


def test_rerun_reuses_every_stage(tiny_run, capsys):
    out, _ = tiny_run
    before = {p.name: (p / "DONE.json").stat().st_mtime for p in (out / "stages").iterdir()}
    run(load_config("tiny"), out)
    after = {p.name: (p / "DONE.json").stat().st_mtime for p in (out / "stages").iterdir()}
    assert before == after
    assert "cached" in capsys.readouterr().out


def test_changed_config_recomputes_only_dependents(tiny_run):
    out, _ = tiny_run
    captures = _stage_dirs(out, "capture")
    evals = _stage_dirs(out, "eval")
    trains = set(p.name for p in _stage_dirs(out, "train"))
    run(load_config("tiny", overrides={"crosscoder.k": 4, "controls.identity": False, "controls.causal": False}), out)
    assert _stage_dirs(out, "capture") == captures and _stage_dirs(out, "eval") == evals
    assert set(p.name for p in _stage_dirs(out, "train")) - trains, "the crosscoder should have been retrained"


def _names(out: Path) -> set[str]:
    return {p.name for p in (out / "stages").iterdir()}


def _kinds(names: set[str]) -> set[str]:
    return {n.rsplit("-", 1)[0] for n in names}


def test_changed_permutations_recompute_only_shift_link_and_report(tiny_run):
    """stats.permutations is read by the shift and link stages (and shown in the report): spliced metrics, causal
    ablations, examples, controls, latent tables and crosscoders stay cached."""
    out, _ = tiny_run
    before = _names(out)
    run(load_config("tiny", overrides={"stats.permutations": 400}), out)
    new = _names(out) - before
    assert _kinds(new) == {"shift", "link", "report"}, sorted(new)
    for name in new:
        assert (out / "stages" / name / "DONE.json").exists(), name


def test_changed_categories_keep_crosscoders_and_latent_tables(tiny_run):
    out, _ = tiny_run
    before = _names(out)
    run(load_config("tiny", overrides={"categories.auroc_min": 0.8}), out)
    new = _kinds(_names(out) - before)
    assert {"grounding", "categorize", "shift", "link", "report"} <= new, new
    assert not new & {"eval", "capture", "train", "diff", "examples", "quality", "controls"}, new


def test_two_seeds_pool_into_the_headline_shift(tiny_run, tiny_organisms):
    """With two seeds the headline shift pools both (clusters of matched latents as the unit) and the first seed's
    table stays beside it; q_linked exists exactly for the categories whose benchmark moved."""
    out, _ = tiny_run
    report = run(load_config("tiny", overrides={"controls.seeds": [0, 1], "controls.identity": False,
                                                "controls.causal": False}), out)
    stage = max(_stage_dirs(out, "shift"), key=lambda p: (p / "DONE.json").stat().st_mtime)
    pooled, single = pd.read_parquet(stage / "shift.parquet"), pd.read_parquet(stage / "shift_main_seed.parquet")
    assert pooled["N_S"].iloc[0] > single["N_S"].iloc[0] and pooled["N_T"].iloc[0] > single["N_T"].iloc[0]
    assert pooled.attrs["seeds"] == 2 and 0 < pooled.attrs["clusters"] <= pooled["N_S"].iloc[0] + pooled["N_T"].iloc[0]
    # the category change test pools the same seeds: S ∪ T against the live shared latents (one-sided, BH)
    ch = pooled.attrs["change"]
    assert ch["seeds"] == 2 and ch["N_specific"] == pooled["N_S"].iloc[0] + pooled["N_T"].iloc[0] and ch["N_shared"] > 0
    tested = pooled[~pooled["change_insufficient"].astype(bool) & (pooled["category"] != "unassigned")]
    assert len(tested) and tested["change_p"].between(0, 1).all() and (tested["change_q"] >= tested["change_p"]).all()
    planted = json.loads((tiny_organisms / "organism.json").read_text())["planted"]
    cats = {c["name"]: c for c in report["categories"]}
    for name, c in cats.items():
        ls = c["latent_shift"] or {}
        if name != "unassigned":
            assert ls["method"] == "pooled_seeds"
        assert ("q_linked" in ls) == bool(planted.get(name)), (name, ls, c["score_gap"])
    assert cats["multilingual"]["latent_shift"]["share_ratio"] > 0 and cats["code"]["latent_shift"]["share_ratio"] < 0


def _eval_runs(out: Path) -> dict[str, Path]:
    runs = {}
    for p in _stage_dirs(out, "eval"):
        spec = json.loads((p / "KEY.json").read_text())["model"]["spec"]
        runs[spec.rsplit("/", 1)[-1]] = p / "run"
    return runs


def test_report_command_rebuilds_from_lm_eval_outputs(tiny_run, tmp_path):
    out, report = tiny_run
    runs = _eval_runs(out)
    assert main(["report", "--base", str(runs["base"]), "--finetuned", str(runs["finetuned"]), "--diff", str(out),
                 "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert [c["name"] for c in again["categories"]] == [c["name"] for c in report["categories"]]
    assert main(["report", "--base", str(runs["base"]), "--finetuned", str(runs["finetuned"]),
                 "--out", str(tmp_path / "bench_only")]) == 0


def test_ci_fails_on_planted_regression_and_passes_on_null(tiny_run, tiny_organisms, tmp_path):
    from lm_diff.bench.evaluate import run_lm_eval

    out, _ = tiny_run
    cfg = load_config("tiny")
    runs = _eval_runs(out)
    base, finetuned = runs["base"], runs["finetuned"]
    summary = tmp_path / "summary.md"
    rc = main(["ci", "--base", str(base), "--finetuned", str(finetuned), "--fail-on", "code<-2.0",
               "--summary", str(summary)])
    assert rc == 1
    assert "code" in summary.read_text()
    null = run_lm_eval(str(tiny_organisms / "null"), cfg.benchmarks.tasks, tmp_path / "null",
                       batch_size=cfg.benchmarks.batch_size)
    rc = main(["ci", "--base", str(base), "--finetuned", str(null), "--fail-on", "code<-2.0",
               "--fail-on", "safety<-2.0", "--summary", str(tmp_path / "null.md")])
    assert rc == 0


def test_capture_key_follows_grounding_file_contents(tmp_path):
    """Editing the grounding prompts in place (same path) must change the capture key, so the capture is redone."""

    g = tmp_path / "grounding.jsonl"
    g.write_text('{"text": "plain prose", "category": "neutral"}\n{"text": "how do I rob a bank", "category": "safety"}\n')
    cfg = load_config("tiny", overrides={"categories.grounding": str(g)})
    k1 = capture_key(cfg, ["a", "b"])
    assert capture_key(cfg, ["a", "b"]) == k1
    g.write_text('{"text": "plain prose", "category": "neutral"}\n{"text": "how do I rob a shop", "category": "safety"}\n')
    assert capture_key(cfg, ["a", "b"])["grounding_sha"] != k1["grounding_sha"]


def test_train_workers_and_progress_from_log(tmp_path, monkeypatch):
    import torch

    from lm_diff.crosscoder.workers import last_step, train_workers

    assert train_workers(0, 1) == 1  # one pending crosscoder: no worker processes
    assert train_workers(0, 4) == max(1, min(4, torch.get_num_threads()))
    assert train_workers(1, 4) == 1 and train_workers(3, 2) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the ranks train together, never in sub-processes
    assert train_workers(0, 4) == 1
    log = tmp_path / "train_log.jsonl"
    assert last_step(log) == 0
    log.write_text('{"step": 0}\n{"step": 1}\n{"step": 2')  # a partly written last line is skipped
    assert last_step(log) == 2


def test_same_config_gives_the_same_report(tiny_run, tmp_path):
    """Every stage after training recomputed from scratch (diff, grounding, categories, shift with its bootstrap and
    permutations, controls, examples, quality, causal, link, report) gives report.json identical apart from
    timestamps, timings and paths; training itself is resumed bit-exactly (tests/test_train.py)."""
    import shutil

    from lm_diff.dev.compare_reports import compare

    out, _ = tiny_run
    run(load_config("tiny"), out)  # cached; earlier tests ran other configs into this folder
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    for d in (copy / "stages").iterdir():
        if d.name.rsplit("-", 1)[0] not in ("eval", "capture", "train"):
            shutil.rmtree(d)
    (copy / "report.json").unlink()
    run(load_config("tiny"), copy)
    diffs, _ = compare(json.loads((out / "report.json").read_text()), json.loads((copy / "report.json").read_text()))
    assert diffs == []


def test_benchmark_grounding_gives_the_planted_verdicts_of_the_grounding_file(tiny_run, tiny_organisms, tmp_path):
    """categories.grounding: benchmark (the suite's 40 held-out items per task, rendered as scored; neutral prompts
    from the corpus's plain text) recovers the same planted verdicts as the organisms' grounding file: multilingual
    and code significant with the planted sign, every planted category's ratio with its sign, no unplanted category
    significant. Controls that do not touch the verdicts (identity crosscoder, causal ablation) are off."""
    _, report = tiny_run
    planted = json.loads((tiny_organisms / "organism.json").read_text())["planted"]
    cfg = load_config("tiny", overrides={"categories.grounding": "benchmark", "benchmarks.limit": 40,
                                         "controls.identity": False, "controls.causal": False})
    bench = run(cfg, tmp_path / "bench")
    assert (bench["run"]["grounding"]["code"]["source"], bench["run"]["grounding"]["neutral"]["source"]) == \
        ("benchmark", "corpus")

    def verdicts(rep: dict) -> dict:
        """Per planted-file category: the sign of the share ratio (planted ones) or whether q < 0.05 (unplanted)."""
        out = {}
        for c in rep["categories"]:
            ls, name = c["latent_shift"], c["name"]
            if not ls or name not in planted:
                continue
            ratio = ls["share_ratio"] if ls["share_ratio"] is not None else (math.inf if ls["n_S"] else -1.0)
            out[name] = (ratio > 0) if planted[name] else (ls["q_value"] is not None and ls["q_value"] < 0.05)
        return out

    expected = {c: (s > 0) if s else False for c, s in planted.items()}
    assert verdicts(report) == expected  # today's grounding file
    assert verdicts(bench) == expected
    shifts = {c["name"]: c["latent_shift"] for c in bench["categories"] if c["latent_shift"]}
    assert shifts["multilingual"]["ci_low"] > 0 and shifts["code"]["ci_high"] < 0, shifts


@pytest.mark.parametrize("where", ["report_stage", "report_files"])
def test_report_resumes_after_a_kill(tiny_run, tmp_path, monkeypatch, where):
    """Interrupted in the report stage (its report.json written, DONE.json not yet) or while the report files are
    written (json and md done, html not): nothing of the report set is left under its final names, the stage is not
    taken as finished, and the rerun gives report.json identical (apart from timestamps, timings and paths) to the
    uninterrupted run."""
    import shutil

    from lm_diff.dev.compare_reports import compare
    from lm_diff.report import writers
    from lm_diff.run.stages import Stages

    out, _ = tiny_run
    run(load_config("tiny"), out)  # cached; earlier tests ran other configs into this folder
    copy = tmp_path / "killed"
    shutil.copytree(out, copy)
    for d in _stage_dirs(copy, "report"):
        shutil.rmtree(d)
    for name in ("report.json", "report.md", "report.html"):
        (copy / name).unlink()
    with monkeypatch.context() as m:
        if where == "report_stage":
            real_finish = Stages.finish

            def finish(self, d, summary, label, seconds):
                if label == "report":
                    assert (d / "report.json").exists()
                    raise KeyboardInterrupt
                real_finish(self, d, summary, label, seconds)

            m.setattr(Stages, "finish", finish)
        else:
            real = writers.report_writers

            def killed_html(report, d):
                assert {p.name for p in Path(d).iterdir()} >= {"report.json", "report.md"}
                raise KeyboardInterrupt

            m.setattr(writers, "report_writers", lambda: {**real(), "html": killed_html})
        with pytest.raises(KeyboardInterrupt):
            run(load_config("tiny"), copy)
    assert not any((copy / n).exists() for n in ("report.json", "report.md", "report.html"))
    if where == "report_stage":
        assert not (_stage_dirs(copy, "report")[0] / "DONE.json").exists()
    assert not list(copy.glob(".report-*"))  # no temporary report folder left behind
    run(load_config("tiny"), copy)
    diffs, _ = compare(json.loads((out / "report.json").read_text()), json.loads((copy / "report.json").read_text()))
    assert diffs == []
    assert all((copy / n).exists() for n in ("report.json", "report.md", "report.html"))


class _ReportDom(HTMLParser):
    """What the browser test reads from Chromium's DOM: section order, latent cards and their highlighted tokens, the
    category chart's rows and the bars inside them."""

    def __init__(self):
        super().__init__()
        self.sections, self.cards, self.rows, self.count_text = [], [], [], ""
        self._stack: list[tuple[str, dict]] = []
        self._in_count = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "article" and "latent" in cls:
            self.cards.append({"set": a.get("data-set"), "hidden": "hidden" in a, "highlighted": 0})
        if tag == "span" and "tok" in cls and any(c in cls for c in (f"h{i}" for i in range(1, 10))) and self.cards:
            self.cards[-1]["highlighted"] += 1
        if tag == "g" and "row" in cls:
            self.rows.append({"category": a.get("data-category"), "insufficient": a.get("data-insufficient") == "1",
                              "ratio_bar": False})
        if tag == "rect" and "bar" in cls and "ratio" in cls and self.rows:
            self.rows[-1]["ratio_bar"] = True
        self._in_count = a.get("id") == "lb-count"

    def handle_data(self, data):
        if self._in_count:
            self.count_text += data


def test_report_renders_in_chromium(tiny_run, tmp_path):
    """The issue-18 checks on the real page after Chromium ran it: the summary is the first section, every latent card
    has a highlighted example, cards of S and of T exist, no bar for an insufficient category, the browser's script
    ran (the CSP allows it)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    out, report = tiny_run
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", "--virtual-time-budget=3000",
           "--dump-dom", (out / "report.html").resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False).stdout
    page = _ReportDom()
    page.feed(dom)
    assert page.sections and page.sections[0] == "summary", page.sections[:3]
    assert page.cards and len(page.cards) == len(report["latent_cards"])
    assert all(c["highlighted"] >= 1 for c in page.cards), [c for c in page.cards if not c["highlighted"]][:3]
    assert {c["set"] for c in page.cards} == {"S", "T"}
    insufficient = [r for r in page.rows if r["insufficient"]]
    assert not any(r["ratio_bar"] for r in insufficient)
    assert {r["category"] for r in insufficient} == {c["name"] for c in report["categories"]  # the headline's
                                                     if (c.get("latent_change") or {}).get("insufficient")}
    assert page.count_text.strip() == f"{len(page.cards)} of {len(page.cards)} latents"  # the filter script ran
    assert report["summary"]["findings"] and (out / "neuronpedia" / "B" / "batch-0.json").exists()
