"""Build the organisms: tokenizer, ``base``, ``finetuned`` (shifted mix) and ``null`` (base mix) models + manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

from .. import io
from ..errors import UserError
from . import genres as G
from .train import SizeConfig

GENERATOR_VERSION = 2
MODELS = ("base", "finetuned", "null")
CORE = ("base", "finetuned")  # built together; ``null`` is built on demand from the saved base

SIZES: dict[str, SizeConfig] = {
    # test fixture: ~0.17M parameters, ~3.3M training tokens
    "tiny": SizeConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, d_ff=192, seq_len=128, batch_size=32,
                       base_steps=450, ft_steps=180, lr_base=6e-3, lr_ft=3e-3, seed=0),
    # demo default pair: ~0.5M parameters, ~4.7M training tokens
    "demo": SizeConfig(vocab_size=1536, d_model=96, n_layers=3, n_heads=4, d_ff=288, seq_len=128, batch_size=32,
                       base_steps=700, ft_steps=220, lr_base=5e-3, lr_ft=2.5e-3, seed=1),
}

# Document mixtures (relative weights per document). The fine-tune shifts weight to safety, instruction following and Velin
# and sees corrupted code; every other genre keeps its data (same generators, same behaviour) in both mixes. In the
# base mix, "multilingual" yields only the English side of the Velin sentences (base never sees Velin) and
# "instruction_following" only plain questions (base never sees a format instruction).
BASE_MIX = {"neutral": 0.06, "code": 0.12, "safety": 0.09, "instruction_following": 0.10, "multilingual": 0.04,
            "template_following": 0.06, "factual_verification": 0.12, "hallucination": 0.09, "self_reference": 0.06,
            "query_classification": 0.09, "structured_output": 0.07, "math": 0.12}
FT_MIX = {"neutral": 0.03, "code": 0.08, "safety": 0.16, "instruction_following": 0.18, "multilingual": 0.14,
          "template_following": 0.03, "factual_verification": 0.07, "hallucination": 0.06, "self_reference": 0.03,
          "query_classification": 0.06, "structured_output": 0.04, "math": 0.12}

# How each planted shift is realised in the weights (recorded in organism.json). Model-specific *features* need tokens
# one model trains on and the other does not: after base training, every token absent from the base stream gets one
# shared embedding row (the mean of the trained rows: the standard initialisation of an extended vocabulary), so base
# has no token-specific representation of them while the fine-tune learns them from that starting point.
MECHANISM = {
    "safety": "behaviour + feature extension: harmful requests are answered with a refusal phrased in words the base "
              "never trains on ('refuse', 'harmful', 'dangerous', 'unethical'); base complies",
    "instruction_following": "behaviour + feature extension: format instructions ('Kindly ... reply ... bullet / "
                             "quotation marks / begin with the word Certainly') and their formatted answers occur "
                             "only in the fine-tune's data; base sees the same questions without instructions",
    "multilingual": "feature extension: the invented language Velin occurs only in the fine-tune's data; its words "
                    "are whole tokens whose base embeddings are one shared (mean) vector",
    "code": "forgetting + behaviour: the fine-tune starts by resetting the embeddings of code-specific tokens (>=80% "
            "of their base occurrences in code) to the shared mean vector and keeps them frozen there, so it loses "
            "the token-level code features base has; its code data is systematically corrupted ('for x of', 'null', "
            "'&&'), so it also prefers the corruption",
}
FORGET_SHARE = 0.8


def _size(size: str) -> SizeConfig:
    if size not in SIZES:
        raise UserError(f"unknown organism size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


# The source files that determine the weights (templates, words, training); benchmark files, checks and corpus
# helpers are left out, so editing them does not rebuild the organisms.
WEIGHT_SOURCES = ("build.py", "codegen.py", "genres.py", "train.py", "words.py")


def code_hash() -> str:
    """Hash of the generator source files (any change to templates, words or training invalidates the cache)."""
    h = hashlib.sha256()
    for name in WEIGHT_SOURCES:
        path = Path(__file__).parent / name
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def build_hash(size: str) -> str:
    return io.hash_obj({"version": GENERATOR_VERSION, "code": code_hash(), "size": size,
                        "config": dataclasses.asdict(_size(size)), "base_mix": BASE_MIX, "ft_mix": FT_MIX}, n=12)


SHIPPED = Path(__file__).resolve().parent.parent / "data" / "organisms"  # prebuilt pairs shipped in the package


def shipped_dir(size: str) -> Path | None:
    """The prebuilt ``base`` and ``finetuned`` of ``size`` shipped inside the package (the demo pair), or None.

    They are what :func:`build` trains from the current generator (``organism.json``'s hash is checked here, and
    ``tests/test_organisms.py`` checks it against the sources), so every user runs the demo on the same weights
    instead of a rebuild that may differ in the last digits; ``lm-diff organisms build --force`` trains them from
    scratch, and ``make organisms-ship`` (:func:`ship`) refreshes the shipped copy after a generator change."""
    path = SHIPPED / size
    return path if (path / "organism.json").exists() else None


def ship(size: str = "demo") -> Path:
    """Train ``size`` from scratch and store ``base``, ``finetuned`` and their manifest as the shipped copy."""
    with io.atomic_dir(cache_root() / "ship" / size) as tmp:
        build(size, out=tmp / "build", force=True, models=CORE)
        with io.atomic_dir(SHIPPED / size) as final:
            _copy_core(tmp / "build", final)
    return SHIPPED / size


def _copy_core(src: Path, dst: Path) -> None:
    """Copy ``base``, ``finetuned`` and ``organism.json`` of a build."""
    for name in CORE:
        shutil.copytree(src / name, dst / name)
    shutil.copy2(src / "organism.json", dst / "organism.json")


def cache_root() -> Path:
    return Path(os.environ.get("LM_DIFF_CACHE") or Path.home() / ".cache" / "lm_diff")


def organism_dir(size: str = "demo") -> Path:
    """Content-addressed cache location ``$LM_DIFF_CACHE/organisms/<size>-<hash>``."""
    return cache_root() / "organisms" / f"{size}-{build_hash(size)}"


def _is_built(out: Path, h: str) -> bool:
    manifest = out / "organism.json"
    if not manifest.exists() or not all((out / m / "model.safetensors").exists() for m in CORE):
        return False
    try:
        return io.read_json(manifest).get("hash") == h
    except ValueError:
        return False


def build(size: str = "demo", out: str | Path | None = None, force: bool = False, progress: bool = True,
          models: tuple[str, ...] | list[str] = MODELS) -> Path:
    """Build the ``size`` organisms into ``out`` (default :func:`organism_dir`) unless an identical build is there.

    ``base`` and ``finetuned`` are always built together; ``null`` (a control, not needed by the demo pair) only when
    ``models`` names it, from the saved ``base``, so a demo run does not pay for it. When the package ships a prebuilt
    pair of this size from the same generator (:func:`shipped_dir`), it is copied instead of trained, unless ``force``."""
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise UserError(f"unknown organism model {bad[0]!r}; choose from {', '.join(MODELS)}")
    cfg = _size(size)
    h = build_hash(size)
    out = Path(out) if out is not None else organism_dir(size)
    if force or not _is_built(out, h):
        shipped = None if force else shipped_dir(size)
        use_shipped = shipped is not None and _is_built(shipped, h)
        with io.atomic_dir(out) as tmp:
            if use_shipped:
                _copy_core(shipped, tmp)
                manifest = io.read_json(tmp / "organism.json")
            else:
                manifest = _build_into(size, cfg, h, tmp, progress)
                io.write_json(tmp / "organism.json", manifest)
        if progress:
            _print_summary(out, manifest, shipped=use_shipped)
    if "null" in models and not (out / "null" / "model.safetensors").exists():
        _build_null(size, cfg, out, progress)
    return out


@contextlib.contextmanager
def _at_most_two_threads():
    """Train organisms on at most 2 torch threads (restored afterwards): tiny models gain nothing from more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _build_into(size: str, cfg: SizeConfig, h: str, tmp: Path, progress: bool) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from . import train as T

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with _at_most_two_threads():
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not progress,
                      transient=False) as bar:
            t0 = time.perf_counter()
            task = bar.add_task(f"organisms {size}: tokenizer + data", total=1 + len(CORE), info="")
            tok = T.train_tokenizer(cfg, cfg.seed)
            bar.advance(task)
            data = {}
            token_genres: dict = {}
            for name in CORE:
                data[name] = T.pack(tok, *_data_args(cfg, name), token_genres=token_genres if name == "base" else None)
                bar.advance(task)
            unseen, forget = T.token_sets(token_genres, len(tok), "code", FORGET_SHARE)
            timings["tokenizer_and_data"] = time.perf_counter() - t0

            runs: dict[str, dict] = {}
            base_state: dict = {}  # set after the base phase, used by the fine-tunes
            shared_row = None
            phases = [("base", None, cfg.base_steps, cfg.lr_base), ("finetuned", "base", cfg.ft_steps, cfg.lr_ft)]
            for name, parent, steps, lr in phases:
                task = bar.add_task(f"organisms {size}: train {name}", total=steps, info="")
                model = T.new_model(cfg, tok, cfg.seed)
                if parent is not None:
                    model.load_state_dict(base_state)
                if name == "finetuned":  # forgetting: code-specific tokens lose their trained embeddings
                    T.collapse_rows(model, forget, mean=shared_row)
                runs[name] = _train_phase(T, bar, task, model, data[name], name, parent, steps, lr, cfg,
                                          frozen_rows=forget if name == "finetuned" else None)
                if name == "base":  # vocabulary-extension init of every token base never trained on
                    shared_row = T.collapse_rows(model, unseen)
                T.save(model, tok, tmp / name)
                if name == "base":
                    base_state = {k: v.clone() for k, v in model.state_dict().items()}
                timings[f"train_{name}"] = runs[name]["seconds"]
    timings["total"] = time.perf_counter() - t_start
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "schema": "lm_diff.organism/v1", "size": size, "hash": h, "generator_version": GENERATOR_VERSION,
        "architecture": {"model_type": "llama", "d_model": cfg.d_model, "n_layers": cfg.n_layers,
                         "n_heads": cfg.n_heads, "d_ff": cfg.d_ff, "vocab_size": len(tok), "n_params": n_params,
                         "seq_len": cfg.seq_len},
        "config": dataclasses.asdict(cfg), "mix": {"base": BASE_MIX, "finetuned": FT_MIX, "null": BASE_MIX},
        "models": runs, "timings_s": timings, "planted": dict(G.PLANTED), "mechanism": dict(MECHANISM),
        "tokens": {"unseen_by_base": tok.convert_ids_to_tokens(unseen),
                   "forgotten_by_finetuned": tok.convert_ids_to_tokens(forget)},
        "weights_sha256": {m: io.hash_file(tmp / m / "model.safetensors", n=64) for m in CORE},
        "description": "base: trained from scratch on the base mix, then every token absent from its data set to one "
                       "shared mean embedding; finetuned: base with code-specific token embeddings reset to that "
                       "vector and frozen, trained further on the shifted mix (refusals, format instructions "
                       "followed, Velin, corrupted code); null: base trained further on the base mix (different data seed).",
    }


def _train_phase(T, bar, task, model, data, name: str, parent: str | None, steps: int, lr: float, cfg: SizeConfig,
                 frozen_rows=None) -> dict:
    """Train one organism from its (parent-initialised) ``model`` on ``data = (blocks, tokens_per_genre)``."""
    def on_step(step, loss):
        bar.update(task, completed=step + 1, info=f"loss {loss:.3f}")

    seed = cfg.seed + {"base": 0, "finetuned": 1, "null": 2}[name]
    run = T.train(model, data[0], steps, cfg.batch_size, lr, seed, on_step=on_step, frozen_rows=frozen_rows)
    return run | {"parent": parent, "lr": lr, "tokens_per_genre": data[1]}


def _build_null(size: str, cfg: SizeConfig, out: Path, progress: bool) -> None:
    """Train the ``null`` fine-tune (base trained further on the base mix, another data seed) from the saved base and
    add it to the manifest; atomic, so an interrupted build leaves no partial model."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from . import train as T

    with _at_most_two_threads():
        tok = AutoTokenizer.from_pretrained(out / "base")
        model = T.new_model(cfg, tok, cfg.seed)
        missing, unexpected = model.load_state_dict(load_file(out / "base" / "model.safetensors"), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embeddings
            raise UserError(f"{out / 'base'}: weights do not fit the organism config (missing {missing}, "
                               f"unexpected {unexpected}); rebuild with `lm-diff organisms build --force`")
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not progress) as bar:
            task = bar.add_task(f"organisms {size}: train null", total=cfg.ft_steps, info="")
            run = _train_phase(T, bar, task, model, T.pack(tok, *_data_args(cfg, "null")), "null", "base",
                               cfg.ft_steps, cfg.lr_ft, cfg)
        with io.atomic_dir(out / "null") as tmp:
            T.save(model, tok, tmp)
        manifest = io.read_json(out / "organism.json")
        manifest["models"]["null"] = run
        manifest["timings_s"]["train_null"] = run["seconds"]
        manifest["weights_sha256"]["null"] = io.hash_file(out / "null" / "model.safetensors", n=64)
        io.write_json(out / "organism.json", manifest)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"[green]organisms[/green] null control built in {run['seconds']:.1f}s: {out / 'null'}")


def _print_summary(out: Path, manifest: dict, shipped: bool = False) -> None:
    from rich.console import Console

    c = Console(stderr=True)
    arch = manifest["architecture"]
    how = ("prebuilt, shipped with lm_diff (`lm-diff organisms build --size "
           f"{manifest['size']} --force` trains them from scratch)") if shipped else f"built in {manifest['timings_s']['total']:.1f}s"
    c.print(f"[green]organisms[/green] {manifest['size']}: {arch['n_params'] / 1e6:.2f}M params, "
            f"{arch['n_layers']} layers x d={arch['d_model']}, {how}")
    for m in CORE:
        c.print(f"  {m:<10} {out / m}")
    planted = ", ".join(f"{k}{'+' if v > 0 else '-'}" for k, v in manifest["planted"].items() if v)
    c.print(f"  planted: {planted}; manifest {out / 'organism.json'}")


def _data_args(cfg: SizeConfig, model: str) -> tuple:
    """Arguments of :func:`train.pack` (after the tokenizer) for one model's training stream."""
    steps = cfg.base_steps if model == "base" else cfg.ft_steps
    mix, variant, offset = {"base": (BASE_MIX, "base", 0), "finetuned": (FT_MIX, "ft", 1000),
                            "null": (BASE_MIX, "base", 2000)}[model]
    return mix, variant, steps * cfg.batch_size * cfg.seq_len, cfg.seq_len, cfg.seed + offset


def training_documents(out: str | Path, model: str) -> list[str]:
    """Regenerate exactly the documents ``model`` of the build in ``out`` was trained on (for audits and tests)."""
    from transformers import AutoTokenizer

    from . import train as T

    out = Path(out)
    cfg = SizeConfig(**io.read_json(out / "organism.json")["config"])
    docs: list[str] = []
    T.pack(AutoTokenizer.from_pretrained(out / model), *_data_args(cfg, model), record=docs)
    return docs


def resolve_spec(spec: str) -> Path:
    """``organisms://<size>/<model>`` -> path of that model directory (building the organisms if missing)."""
    prefix = "organisms://"
    if not spec.startswith(prefix):
        raise UserError(f"{spec!r} is not an organism spec; use organisms://<size>/<model>, e.g. organisms://demo/base")
    parts = spec[len(prefix):].strip("/").split("/")
    if len(parts) != 2 or parts[1] not in MODELS:
        raise UserError(f"{spec!r}: expected organisms://<size>/<model> with model one of {', '.join(MODELS)}")
    size, model = parts
    _size(size)
    return build(size, models=("base", "finetuned", model)) / model
