"""``lm-diff run``: benchmarks → capture → train → diff → grounding → categorize → shift → controls, examples,
quality, causal → link → report, as cached stages (:mod:`lm_diff.run.stages`).

Each stage lives in ``OUT/stages/<name>-<hash>/``; the hash covers the config sections the stage reads and the names
of the upstream stage directories it reads, so a rerun reuses finished stages, an interrupted run resumes (capture and
training are resumable inside their directory), and a changed config recomputes only what depends on it. A stage is
finished when its ``DONE.json`` exists. One run at a time holds an output folder (:class:`OutputLock`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from lm_diff import console
from lm_diff.bench.evaluate import reused_runs, run_configured
from lm_diff.bench.render import format_of, strip_bos
from lm_diff.bench.suites import bench_task_manager, task_categories, task_prompts
from lm_diff.bench.task_data import chat_marker, chat_rendered_tasks
from lm_diff.capture.activations import capture
from lm_diff.capture.corpus import read_corpus
from lm_diff.capture.store import ActivationStore
from lm_diff.capture.stream import ActivationStream
from lm_diff.categorize.grounding import grounding_prompts
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import RunConfig
from lm_diff.crosscoder.train import train_crosscoder
from lm_diff.crosscoder.workers import TrainJob, run_train_jobs, train_workers
from lm_diff.errors import UserError
from lm_diff.io import hash_obj, write_text
from lm_diff.models import (
    Pair,
    check_pair_early,
    crosscoder_pairs,
    layer_count,
    load_tokenizer,
    model_pair,
    model_sources,
    resolve_layers,
)
from lm_diff.report.terminal import print_summary
from lm_diff.report.writers import write_report
from lm_diff.run.analysis import crosscoder_diffs, doc_index
from lm_diff.run.checks import causal_stage, controls_stage, examples_stage, quality_stage
from lm_diff.run.latents import categorize_stage, shift_stage
from lm_diff.run.reporting import grounding_provenance, link_stage, report_stage
from lm_diff.run.stages import STAGES, OutputLock, Stages

__all__ = ["run", "Stages", "STAGES", "OutputLock", "capture_key", "capture_docs", "eval_stage", "capture_stage",
           "train_stage", "train_stages", "analyse"]


# ----------------------------------------------------------------------------------------------------------------------
# Stage: benchmarks


def eval_stage(cfg: RunConfig, pair: Pair, stages: Stages) -> dict[str, Path]:
    b = cfg.benchmarks
    bench_key = {k: getattr(b, k) for k in ("tasks", "limit", "num_fewshot", "apply_chat_template", "include_path")}
    bench_key.update(format_of(b).key())  # fewshot_as_multiturn / system prompt, when not lm-eval's defaults
    if (b.model, b.model_args, b.confirm_run_unsafe_code) != ("hf", None, False):
        bench_key.update(model=b.model, model_args=b.model_args, confirm_run_unsafe_code=b.confirm_run_unsafe_code)
    if b.reuse:
        return reused_runs(b.reuse, cfg.resolve_path)  # existing lm-eval runs of both models, checked
    out: dict[str, Path] = {}
    for role in ("A", "B"):
        i = pair.index[role]
        key = {"model": pair.fingerprints[i], "bench": bench_key, "dtype": cfg.models.dtype}

        def fn(d: Path, i=i) -> dict:
            target = d / "run"
            run_configured(b, str(pair.paths[i] or pair.specs[i]), target, device=cfg.models.device,
                           dtype=cfg.models.dtype, include_path=[str(cfg.resolve_path(p)) for p in b.include_path])
            return {"run": str(target)}

        d, _ = stages.run("eval", key, fn, label=f"benchmarks on {role} ({pair.specs[i]})")
        out[role] = d / "run"
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Stage: capture


def capture_docs(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], list[dict]]:
    """The capture corpus: benchmark prompts and grounding prompts first (always captured whole), then the corpus.

    Returns (docs for ``capture``, index rows with kind/task/doc_id/category per capture doc id)."""
    docs: list[dict] = []
    index: list[dict] = []
    taxonomy = get_taxonomy(cfg)
    if cfg.capture.benchmark_prompts:
        b = cfg.benchmarks
        tm = bench_task_manager(cfg)
        cats = task_categories(b.tasks, tm, overrides=b.task_categories, taxonomy=taxonomy)
        for row in task_prompts(b.tasks, tm, limit=b.limit, fmt=format_of(b), tokenizer=tokenizer, categories=cats):
            text = strip_bos(row["text"], tokenizer)  # the capture adds the tokenizer's BOS itself
            docs.append({"text": text, "source": f"bench:{row['task']}", "category": row.get("category"), "chat": False})
            index.append({"kind": "bench", "task": row["task"], "doc_id": row["doc_id"], "category": row.get("category")})
    grounding = grounding_prompts(cfg, taxonomy, tokenizer=tokenizer)
    if not any(g["category"] != "neutral" for g in grounding) or not any(g["category"] == "neutral" for g in grounding):
        raise UserError("no grounding prompts for this taxonomy: set categories.grounding to a JSONL of {text, category} "
                        "rows with category prompts and 'neutral' background prompts")
    for row in grounding:
        docs.append({"text": row["text"], "source": f"grounding:{row['category']}", "category": row["category"], "chat": False})
        index.append({"kind": "grounding", "category": row["category"], **({"source": row["source"]} if row.get("source") else {})})
    used = _count_tokens(tokenizer, [d["text"] for d in docs])
    budget = max(0, cfg.capture.max_tokens - used)
    if used >= cfg.capture.max_tokens:
        raise UserError(
            f"capture.max_tokens ({cfg.capture.max_tokens}) is used up by benchmark and grounding prompts ({used} tokens); "
            "raise capture.max_tokens or set benchmarks.limit"
        )
    corpus = read_corpus(cfg.capture.corpus, tokenizer, budget, cfg.capture.seed, used, cfg.crosscoder.batch_size)
    for d in corpus:
        docs.append(d)
        index.append({"kind": "corpus", "source": d["source"]})
    return docs, index


def _count_tokens(tokenizer: Any, texts: list[str]) -> int:
    if not texts:
        return 0
    enc = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return sum(len(x) for x in enc)


def capture_key(cfg: RunConfig, fingerprints: Any) -> dict:
    """What the capture depends on: the models, layers, capture settings, benchmark selection, and the *contents* of
    the grounding prompts and taxonomy (editing the grounding file in place recomputes the capture)."""
    taxonomy = get_taxonomy(cfg)
    capture_cfg = dataclasses.asdict(cfg.capture)
    if not cfg.capture.streaming:  # the streaming keys leave the disk-store stages' keys (and caches) as they were
        capture_cfg.pop("streaming")
        capture_cfg.pop("stored_tokens")
    return {
        "models": fingerprints, "layers": cfg.layers, "capture": capture_cfg,
        "bench": [cfg.benchmarks.tasks, cfg.benchmarks.limit, cfg.benchmarks.num_fewshot, cfg.benchmarks.apply_chat_template,
                  *([format_of(cfg.benchmarks).key()] if format_of(cfg.benchmarks).key() else [])],
        "grounding": cfg.categories.grounding, "taxonomy": cfg.categories.taxonomy,
        "grounding_sha": hash_obj([[g["text"], g["category"]] for g in grounding_prompts(cfg, taxonomy)]),
        "categories": [c if isinstance(c, str) else c.name for c in taxonomy],
    }


def capture_stage(cfg: RunConfig, pair: Pair, stages: Stages, loaded: dict) -> tuple[Path, list[int]]:
    key = capture_key(cfg, pair.fingerprints)

    def fn(d: Path) -> dict:
        # One model resident at a time unless capture.simultaneous: the capture loads each model when its pass starts.
        tok = loaded.get("tokenizer") or load_tokenizer(cfg, pair)
        sources = loaded["models"] if "models" in loaded else model_sources(cfg, pair)
        layers = resolve_layers(cfg.layers, layer_count(cfg, pair))
        docs, index = capture_docs(cfg, tok)
        write_text(d / "doc_index.jsonl", "".join(json.dumps(r) + "\n" for r in index))
        store = capture(sources, tok, docs, layers, d / "store", _stored(cfg, tok, docs, index), model_names=pair.names)
        s = ActivationStore(store)
        return {"store": str(store), "layers": layers, "tokens": s.n_tokens, "docs": len(docs)}

    d, summary = stages.run("capture", key, fn, label="paired activation capture")
    return d, summary["layers"]


def _stored(cfg: RunConfig, tokenizer: Any, docs: list[dict], index: list[dict]) -> Any:
    """The capture settings of the store on disk: all of ``capture`` by default; with ``capture.streaming`` the first
    ``capture.stored_tokens`` (benchmark and grounding prompts, then the corpus): a prefix of the stream's tokens, same
    order and document ids. The prompts the analysis reads must fit whole."""
    c = cfg.capture
    if not c.streaming:
        return c
    prompts = _count_tokens(tokenizer, [d["text"] for d, r in zip(docs, index) if r["kind"] != "corpus"])
    if prompts >= c.stored_tokens:
        raise UserError(f"capture.stored_tokens ({c.stored_tokens}) does not hold the benchmark and grounding prompts "
                        f"({prompts} tokens) the analysis reads; raise capture.stored_tokens or set benchmarks.limit")
    console.out().print(f"streaming: {min(c.stored_tokens, c.max_tokens):,} of {c.max_tokens:,} capture tokens go to "
                        "disk for the analysis; training computes its activations on the fly")
    return dataclasses.replace(c, max_tokens=min(c.stored_tokens, c.max_tokens))


def activation_source(cfg: RunConfig, pair: Pair, capture_dir: Path, layers: list[int],
                      loaded: dict) -> Callable[[], Any]:
    """What training reads: the capture stage's store, or with ``capture.streaming`` an ``ActivationStream`` over the
    whole capture corpus (every model resident; built on first use and shared by the run's crosscoders)."""
    if not cfg.capture.streaming:
        return lambda: ActivationStore(capture_dir / "store")
    made: list[ActivationStream] = []

    def stream() -> ActivationStream:
        if not made:
            tok = loaded.get("tokenizer") or load_tokenizer(cfg, pair)
            docs, _ = capture_docs(cfg, tok)
            sources = loaded["models"] if "models" in loaded else model_sources(cfg, pair)
            made.append(ActivationStream(sources, tok, docs, layers, cfg.capture, model_names=pair.names))
        return made[0]

    return stream


# ----------------------------------------------------------------------------------------------------------------------
# Stage: training


def _train_spec(cfg: RunConfig, capture_dir: Path, layer: int, models: tuple[int, int], seed: int,
                steps_fraction: float = 1.0) -> tuple[Any, dict]:
    """(crosscoder config, stage key) of one crosscoder; the worker count is not part of the key."""
    xc = dataclasses.replace(cfg.crosscoder, seed=seed, steps=max(1, int(round(cfg.crosscoder.steps * steps_fraction))))
    xkey = dataclasses.asdict(xc)
    xkey.pop("workers", None)
    return xc, {"capture": capture_dir.name, "layer": layer, "models": list(models), "crosscoder": xkey}


def train_stage(cfg: RunConfig, stages: Stages, capture_dir: Path, layer: int, name: str, models: tuple[int, int],
                seed: int, steps_fraction: float = 1.0, label: Optional[str] = None,
                source: Optional[Callable[[], Any]] = None) -> Path:
    """One crosscoder, trained on ``source()`` (default: the capture stage's store)."""
    xc, key = _train_spec(cfg, capture_dir, layer, models, seed, steps_fraction)

    def fn(d: Path) -> dict:
        store = source() if source is not None else ActivationStore(capture_dir / "store")
        train_crosscoder(store, xc, d / "crosscoder", models=models, layer=layer, progress=True)
        return {"crosscoder": str(d / "crosscoder"), "steps": xc.steps, "seed": seed, "models": list(models)}

    d, _ = stages.run("train", key, fn, label=label or f"crosscoder {name} layer {layer} seed {seed}")
    return d / "crosscoder"


def train_stages(cfg: RunConfig, stages: Stages, capture_dir: Path, layer: int,
                 jobs: list[tuple[str, tuple[int, int], int, float, str]],
                 source: Optional[Callable[[], Any]] = None) -> list[Path]:
    """Train several crosscoders (``(name, models, seed, steps_fraction, label)`` each), in parallel worker processes
    (:mod:`lm_diff.crosscoder.workers`) when more than one is pending and more than one worker is allowed (never when
    streaming: the stream holds every model in this process); cached ones are reused. Returns their ``crosscoder``
    directories, in job order."""
    specs = [(_train_spec(cfg, capture_dir, layer, models, seed, frac), models, label)
             for _, models, seed, frac, label in jobs]
    dirs = [stages.dir("train", key) for (_, key), _, _ in specs]
    pending = [i for i, d in enumerate(dirs) if stages.done(d) is None]
    workers = 1 if cfg.capture.streaming else train_workers(cfg.crosscoder.workers, len(pending))
    if workers <= 1:
        return [train_stage(cfg, stages, capture_dir, layer, name, models, seed, frac, label, source)
                for name, models, seed, frac, label in jobs]
    con = console.out()
    for i, (_, _, label) in enumerate(specs):
        if i not in pending:
            con.print(f"[dim]✓ {label}: cached in {dirs[i]}[/dim]")
    todo = [TrainJob(label, xc, dirs[i], tuple(models)) for i, ((xc, _), models, label) in enumerate(specs)
            if i in pending]
    run_train_jobs(todo, capture_dir / "store", layer, workers, stages.finish, con)
    return [d / "crosscoder" for d in dirs]


# ----------------------------------------------------------------------------------------------------------------------
# The whole run


def warn_chat_rendered(cfg: RunConfig, tokenizer: Any) -> list[str]:
    """With ``benchmarks.apply_chat_template`` on, warn about (and return) the suite's tasks whose packaged items
    already carry the chat template: lm-eval wraps each of their prompts in a second template, and both models are
    scored, and their prompts captured, on text neither was made for."""
    b = cfg.benchmarks
    if not b.apply_chat_template or b.reuse:
        return []
    marker = chat_marker(tokenizer)
    try:
        tasks = chat_rendered_tasks(b.tasks, marker, [cfg.resolve_path(p) for p in b.include_path])
    except UserError:  # an unreadable task file is lm-eval's to report, when it loads the task; a warning never stops a run
        return []
    if tasks:
        named = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
        console.err().print(f"warning: benchmarks.apply_chat_template is true but the items of {named} already carry the "
                            f"chat template ({marker!r}): lm-eval wraps them in a second one; set "
                            "benchmarks.apply_chat_template: false for these tasks")
    return tasks


def run(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    """Run every stage for ``cfg`` into ``out`` and write the report; returns the report dict."""
    out = Path(out)
    model_pair(cfg)  # a config without models is refused before anything is written
    with OutputLock(out):
        return _run(cfg, out, force)


def _run(cfg: RunConfig, out: Path, force: bool) -> dict:
    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    t0 = time.perf_counter()
    con = console.out()
    con.print(f"[bold]lm-diff run[/bold] {cfg.name!r} → {out}")
    stages = Stages(out, force=force)
    pair = model_pair(cfg)
    loaded: dict = {"tokenizer": check_pair_early(cfg, pair)}  # the pair is checked before any benchmark runs
    warn_chat_rendered(cfg, loaded["tokenizer"])
    evals = eval_stage(cfg, pair, stages)
    capture_dir, layers = capture_stage(cfg, pair, stages, loaded)
    layer = layers[0]
    jobs = [(name, models, s, 1.0, f"crosscoder {name} layer {layer} seed {s}")
            for name, models in crosscoder_pairs(cfg, pair).items() for s in cfg.controls.seeds]
    if cfg.controls.identity:
        a = pair.index["A"]
        jobs.append(("AA", (a, a), cfg.controls.seeds[0], cfg.controls.identity_fraction,
                     f"identity control (A, A) layer {layer}"))
    dirs = iter(train_stages(cfg, stages, capture_dir, layer, jobs,
                             activation_source(cfg, pair, capture_dir, layers, loaded)))
    crosscoders: dict[str, dict[int, Path]] = {}
    for name, _, s, _, _ in jobs[:len(jobs) - bool(cfg.controls.identity)]:
        crosscoders.setdefault(name, {})[s] = next(dirs)
    identity = next(dirs) if cfg.controls.identity else None
    report = analyse(cfg, pair, stages, evals, capture_dir, layer, crosscoders, identity, loaded)
    report.setdefault("run", {})["timings"] = dict(stages.timings, total=round(time.perf_counter() - t0, 2))
    paths = write_report(report, out, cfg.report.formats)
    print_summary(report, con)
    for fmt, p in paths.items():
        con.print(f"[bold green]report[/bold green] ({fmt}): {p}")
    con.print(f"finished in {time.perf_counter() - t0:.1f} s")
    return report


def analyse(cfg: RunConfig, pair: Pair, stages: Stages, evals: dict[str, Path], capture_dir: Path, layer: int,
            crosscoders: dict[str, dict[int, Path]], identity: Optional[Path], loaded: dict) -> dict:
    """The stages after training, each cached on its own: diff and grounding per crosscoder, categorize, shift,
    controls, examples, quality, causal, link, report. Returns the report dict."""
    diffs = crosscoder_diffs(cfg, stages, capture_dir, layer, crosscoders, crosscoder_pairs(cfg, pair))
    cat_dir = categorize_stage(cfg, stages, capture_dir, layer, diffs)
    shift_dir = shift_stage(cfg, stages, cat_dir, diffs)
    controls_dir = controls_stage(cfg, stages, capture_dir, layer, diffs, identity, pair.index["A"])
    examples_dir = examples_stage(cfg, stages, capture_dir, layer, diffs, pair, loaded)
    quality_dir = quality_stage(cfg, pair, stages, capture_dir, layer, diffs, loaded)
    causal_dir = causal_stage(cfg, pair, stages, layer, diffs, evals, loaded)
    S = diffs["PB" if cfg.design == "anchored" else "AB"][cfg.controls.seeds[0]]
    inputs = {"latents": cat_dir, "categories": cat_dir, "scaling": S.diff_dir, "shift": shift_dir, "seeds": shift_dir,
              "doc_activations": examples_dir, "examples": examples_dir, "controls": controls_dir,
              "quality": quality_dir, **({"causal": causal_dir} if causal_dir else {})}
    link_dir = link_stage(cfg, stages, evals, inputs)
    _, report = report_stage(cfg, stages, link_dir, inputs, organism_manifest(pair),
                             grounding=grounding_provenance(doc_index(capture_dir)))
    return report


def organism_manifest(pair: Pair) -> Optional[dict]:
    for spec, path in zip(pair.specs, pair.paths):
        if spec.startswith("organisms://") and path is not None:
            m = Path(path).parent / "organism.json"
            if m.exists():
                return json.loads(m.read_text())
    return None


def run_capture_stage(cfg: RunConfig, out: Path) -> Path:
    """``lm-diff capture``: only the capture stage."""
    with OutputLock(Path(out)):
        d, _ = capture_stage(cfg, model_pair(cfg), Stages(Path(out)), {})
    return d


def run_train_stage(cfg: RunConfig, out: Path) -> list[Path]:
    """``lm-diff train``: capture (if needed) and the crosscoder(s) of the first seed."""
    with OutputLock(Path(out)):
        stages = Stages(Path(out))
        pair = model_pair(cfg)
        capture_dir, layers = capture_stage(cfg, pair, stages, {})
        source = activation_source(cfg, pair, capture_dir, layers, {})
        return [train_stage(cfg, stages, capture_dir, layers[0], name, models, cfg.controls.seeds[0], source=source)
                for name, models in crosscoder_pairs(cfg, pair).items()]


def run_diff_stage(cfg: RunConfig, out: Path) -> dict:
    """``lm-diff diff``: every stage up to diffing. Linkage needs the benchmark runs, so this is ``run`` (each finished
    stage is reused from ``out``)."""
    return run(cfg, out)
