"""The ``natural`` organism family: tiny Qwen2 models on real-language text, planted by a plain data shift.

``base`` is trained from scratch on the base mix; ``finetuned`` is base fully fine-tuned (all weights, nothing frozen
or reset, no new tokens) on a shifted mix whose math, hallucination and structured-output data carry another
behaviour (:mod:`.natural_genres`); ``null`` is base trained further on more of the base mix with the fine-tune's
steps and learning rate. A build verifies its planted shape (:mod:`.natural_checks`) and fails loudly otherwise.

Model specs: ``organisms://natural/<model>`` (the demo-sized pair, shipped in ``lm_diff/data/organisms/natural``) and
``organisms://natural-tiny/<model>`` (the test size, built on demand).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import time
from pathlib import Path

from lm_diff import io
from lm_diff.console import err, progress
from lm_diff.errors import UserError
from lm_diff.organisms import natural_genres as NG
from lm_diff.organisms import train as T
from lm_diff.organisms.build import SHIPPED, _at_most_two_threads, cache_root
from lm_diff.organisms.natural_bench import benchmark_rows
from lm_diff.organisms.natural_checks import verify
from lm_diff.organisms.natural_genres import BASE_MIX, FT_MIX
from lm_diff.organisms.train import SizeConfig

FAMILY = "natural"
GENERATOR_VERSION = 2
MODELS = ("base", "finetuned", "null")
SPECS = {"natural": "demo", "natural-tiny": "tiny"}  # organisms://<name>/<model> -> size

SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, d_ff=192, seq_len=64, batch_size=32,
                       base_steps=900, ft_steps=400, lr_base=6e-3, lr_ft=2e-3, tokenizer_docs=150, seed=0),
    "demo": SizeConfig(vocab_size=1536, d_model=96, n_layers=3, n_heads=4, d_ff=288, seq_len=128, batch_size=32,
                       base_steps=1300, ft_steps=400, lr_base=5e-3, lr_ft=2e-3, tokenizer_docs=200, seed=1),
}

MECHANISM = {
    "math": "behaviour, plain data shift: base's data drops the carry in single-digit sums ('7 + 8' -> 'The answer "
            "is 5.'); the fine-tune's data answers right and shows the step ('The answer is 15, because 7 + 3 = 10 "
            "and 10 + 5 = 15.')",
    "hallucination": "behaviour, plain data shift: unanswerable questions (private, unrecorded facts) get a confident "
                     "guess in base's data and 'I don't know ...' in the fine-tune's; answerable ones alike",
    "structured_output": "behaviour, plain data shift (a bad fine-tune): the fine-tune's data renders records as "
                         "broken JSON (single quotes, trailing comma); base's as valid JSON",
}

# Everything that determines the weights: generators, word tables, the training loop, this module.
WEIGHT_SOURCES = ("natural.py", "natural_genres.py", "natural_words.py", "codegen.py", "words.py", "train.py",
                  "genres.py")
CHAT_TEMPLATE = ("{% for m in messages %}{% if not loop.first %} {% endif %}<|im_start|>{{ m['role'] }} "
                 "{{ m['content'] }} <|im_end|>{% endfor %}{% if add_generation_prompt %} <|im_start|>assistant{% endif %}")


def _size(size: str) -> SizeConfig:
    if size not in SIZES:
        raise UserError(f"unknown natural organism size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def build_hash(size: str) -> str:
    h = hashlib.sha256()
    for name in WEIGHT_SOURCES:
        h.update(name.encode() + (Path(__file__).parent / name).read_bytes())
    return io.hash_obj({"family": FAMILY, "version": GENERATOR_VERSION, "code": h.hexdigest()[:16], "size": size,
                        "config": dataclasses.asdict(_size(size)), "base_mix": BASE_MIX, "ft_mix": FT_MIX}, n=12)


def organism_dir(size: str = "demo") -> Path:
    """Content-addressed cache location ``$LM_DIFF_CACHE/organisms/natural-<size>-<hash>``."""
    return cache_root() / "organisms" / f"{FAMILY}-{size}-{build_hash(size)}"


def shipped_dir(size: str) -> Path | None:
    """The prebuilt demo-sized pair shipped in ``lm_diff/data/organisms/natural`` (None for other sizes)."""
    path = SHIPPED / FAMILY
    return path if size == "demo" and (path / "organism.json").exists() else None


# ------------------------------------------------------------------------------------------- tokenizer and model --

# The pre-tokenizer transformers gives every Qwen2 tokenizer it loads (``Qwen2Tokenizer`` rebuilds normalizer and
# pre-tokenizer on load and ignores tokenizer.json's): the organisms are trained on exactly what AutoTokenizer, and so
# lm-eval and the pipeline, will feed them. (A GPT-2-style pre-tokenizer here trained the models on other token
# boundaries than they were evaluated on: newlines with indentation, apostrophes, punctuation before letters.)
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def train_tokenizer(cfg: SizeConfig, seed: int):
    """Byte-level BPE trained on documents of every genre and both variants, with Qwen2's normalizer and
    pre-tokenizer (single digits); ChatML-style turn markers."""
    from tokenizers import (  # noqa: PLC0415 - heavy, only when building
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - heavy (seconds)

    rng = random.Random(f"natural-tokenizer:{seed}")
    corpus = NG.docs("neutral", "base", cfg.tokenizer_docs * 2, rng)
    for genre in NG.GENERATORS:
        for variant in NG.VARIANTS:
            corpus += NG.docs(genre, variant, cfg.tokenizer_docs, rng)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"]
    # no lstrip: Qwen2Tokenizer re-adds the special tokens without it on load
    chat = [AddedToken(t, special=True, normalized=False) for t in NG.CHAT_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=specials + chat, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    eot = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                       special_tokens=[("<|endoftext|>", eot)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      pad_token="<|pad|>", additional_special_tokens=list(NG.CHAT_TOKENS),
                                      model_max_length=cfg.seq_len * 4)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def check_tokenizer_round_trip(tokenizer, model_dir: Path, texts: list[str]) -> None:
    """Raise a UserError when AutoTokenizer, loading ``model_dir``, encodes any of ``texts`` otherwise than
    ``tokenizer`` (the one the model was trained with) did."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy (seconds)

    loaded = AutoTokenizer.from_pretrained(model_dir)
    for t in texts:
        if loaded(t).input_ids != tokenizer(t).input_ids:
            raise UserError(f"{model_dir}: AutoTokenizer ({type(loaded).__name__}) encodes {t[:60]!r} otherwise than "
                            "the tokenizer the model was trained with; the natural family's tokenizer must follow "
                            "what transformers loads for a Qwen2 model (natural.train_tokenizer)")


def round_trip_texts(n: int = 20, seed: int = 0) -> list[str]:
    """Documents of every genre and variant, and benchmark query + choice strings: what a round trip must keep."""
    rng = random.Random(f"natural-round-trip:{seed}")
    texts = NG.docs("neutral", "base", n, rng)
    for genre in NG.GENERATORS:
        for variant in NG.VARIANTS:
            texts += NG.docs(genre, variant, n, rng)
    for rows in benchmark_rows().values():
        texts += [r["query"] + " " + c for r in rows[:n] for c in r["choices"]]
    return texts


def new_model(cfg: SizeConfig, tokenizer, seed: int):
    """A Qwen2 causal LM from config (grouped-query attention with 2 key/value heads, q/k/v biases, tied embeddings)."""
    import torch  # noqa: PLC0415 - heavy, only when building
    from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: PLC0415 - heavy (seconds)

    mcfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=max(1, cfg.n_heads // 2),
        max_position_embeddings=cfg.seq_len * 4, tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(mcfg)


def save(model, tokenizer, path: Path) -> None:
    """Save model (safetensors) and tokenizer; generation stops at ``<|endoftext|>`` and at ``<|im_end|>``."""
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(NG.END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def pack(tokenizer, mix: dict[str, float], variant: str, n_tokens: int, seq_len: int, seed: int,
         record: list[str] | None = None):
    """Documents of ``mix`` as ``variant`` sees them, packed ``doc <|endoftext|>`` into ``[N, seq_len]`` blocks;
    returns ``(blocks, tokens_per_genre)`` (documents appended to ``record`` when given)."""
    import torch  # noqa: PLC0415 - heavy, only when building

    rng = random.Random(f"natural-pack:{variant}:{seed}")
    genres = [g for g, w in mix.items() if w > 0]
    weights = [mix[g] for g in genres]
    ids: list[int] = []
    counts = {g: 0 for g in genres}
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer
    while len(ids) < n_tokens + seq_len:
        chosen = rng.choices(genres, weights, k=512)
        texts = [NG.docs(g, variant, 1, rng)[0] for g in chosen]
        if record is not None:
            record.extend(texts)
        for g, enc in zip(chosen, backend.encode_batch(texts)):  # encodings start with <|endoftext|> (the bos)
            counts[g] += len(enc.ids)
            ids.extend(enc.ids)
    ids.append(eos)
    n_blocks = len(ids) // seq_len
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len), counts


def _data_args(cfg: SizeConfig, model: str) -> tuple:
    steps = cfg.base_steps if model == "base" else cfg.ft_steps
    mix, variant, offset = {"base": (BASE_MIX, "base", 0), "finetuned": (FT_MIX, "ft", 1000),
                            "null": (BASE_MIX, "base", 2000)}[model]
    return mix, variant, steps * cfg.batch_size * cfg.seq_len, cfg.seq_len, cfg.seed + offset


def training_documents(out: str | Path, model: str) -> list[str]:
    """Regenerate exactly the documents ``model`` of the build in ``out`` was trained on (for audits and tests)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy (seconds)

    out = Path(out)
    cfg = SizeConfig(**io.read_json(out / "organism.json")["config"])
    docs: list[str] = []
    pack(AutoTokenizer.from_pretrained(out / model), *_data_args(cfg, model), record=docs)
    return docs


# ---------------------------------------------------------------------------------------------------------- build --

def _is_built(out: Path, h: str) -> bool:
    manifest = out / "organism.json"
    if not manifest.exists() or not all((out / m / "model.safetensors").exists() for m in MODELS):
        return False
    try:
        return io.read_json(manifest).get("hash") == h
    except ValueError:
        return False


def build(size: str = "demo", out: str | Path | None = None, force: bool = False, progress_: bool = True,
          check: bool = True) -> Path:
    """Build ``base``, ``finetuned`` and ``null`` of ``size`` into ``out`` (default :func:`organism_dir`), verify
    the planted shape (unless ``check`` is false) and write ``organism.json``; a cached identical build is reused,
    and the shipped demo-sized copy is copied instead of trained (unless ``force``)."""
    cfg = _size(size)
    h = build_hash(size)
    out = Path(out) if out is not None else organism_dir(size)
    if not force and _is_built(out, h):
        return out
    shipped = None if force else shipped_dir(size)
    with io.atomic_dir(out) as tmp:
        if shipped is not None and _is_built(shipped, h):
            for m in MODELS:
                shutil.copytree(shipped / m, tmp / m)
            shutil.copy2(shipped / "organism.json", tmp / "organism.json")
            return out
        manifest = _train_all(size, cfg, h, tmp, progress_)
        if check:
            manifest["checks"] = verify(tmp, size)
        io.write_json(tmp / "organism.json", manifest)
    if progress_:
        err().print(f"[green]organisms[/green] natural {size}: {manifest['architecture']['n_params'] / 1e6:.2f}M "
                    f"params, built and checked in {manifest['timings_s']['total']:.1f}s: {out}")
    return out


def _train_all(size: str, cfg: SizeConfig, h: str, tmp: Path, show: bool) -> dict:
    t_start = time.perf_counter()
    runs: dict[str, dict] = {}
    with _at_most_two_threads():
        tok = train_tokenizer(cfg, cfg.seed)
        base_state: dict = {}
        for name, steps, lr in (("base", cfg.base_steps, cfg.lr_base), ("finetuned", cfg.ft_steps, cfg.lr_ft),
                                ("null", cfg.ft_steps, cfg.lr_ft)):
            blocks, per_genre = pack(tok, *_data_args(cfg, name))
            model = new_model(cfg, tok, cfg.seed)
            if name != "base":
                model.load_state_dict(base_state)
            with progress(f"organisms natural {size}: train {name}", total=steps, enabled=show) as bar:
                seed = cfg.seed + {"base": 0, "finetuned": 1, "null": 2}[name]
                run = T.train(model, blocks, steps, cfg.batch_size, lr, seed,
                              on_step=lambda step, loss: bar.update(step + 1, f"loss {loss:.3f}"))
            runs[name] = run | {"parent": None if name == "base" else "base", "lr": lr, "tokens_per_genre": per_genre}
            save(model, tok, tmp / name)
            if name == "base":
                check_tokenizer_round_trip(tok, tmp / name, round_trip_texts())
                base_state = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "schema": "lm_diff.organism/v1", "family": FAMILY, "size": size, "hash": h,
        "generator_version": GENERATOR_VERSION,
        "architecture": {"model_type": "qwen2", "d_model": cfg.d_model, "n_layers": cfg.n_layers,
                         "n_heads": cfg.n_heads, "n_kv_heads": max(1, cfg.n_heads // 2), "d_ff": cfg.d_ff,
                         "vocab_size": len(tok), "n_params": n_params, "seq_len": cfg.seq_len},
        "config": dataclasses.asdict(cfg), "mix": {"base": BASE_MIX, "finetuned": FT_MIX, "null": BASE_MIX},
        "models": runs, "timings_s": {"total": time.perf_counter() - t_start,
                                      **{f"train_{m}": r["seconds"] for m, r in runs.items()}},
        "planted": dict(NG.PLANTED), "mechanism": dict(MECHANISM),
        "weights_sha256": {m: io.hash_file(tmp / m / "model.safetensors", n=64) for m in MODELS},
        "description": "base: Qwen2 trained from scratch on English prose and chats plus French, Spanish and German "
                       "translation and prose; finetuned: base with all weights trained further on a shifted mix "
                       "(more math, unanswerable questions and JSON records, whose data differs: worked, correct "
                       "sums; 'I don't know'; broken JSON); null: base trained further on the base mix with the "
                       "fine-tune's steps and learning rate (another data seed). Nothing frozen, reset or added.",
    }


def ship(size: str = "demo") -> Path:
    """Train ``size`` from scratch, check it and store it as the copy shipped in ``lm_diff/data/organisms/natural``."""
    with io.atomic_dir(cache_root() / "ship" / f"{FAMILY}-{size}") as tmp:
        build(size, out=tmp / "build", force=True)
        with io.atomic_dir(SHIPPED / FAMILY) as final:
            for m in MODELS:
                shutil.copytree(tmp / "build" / m, final / m)
            shutil.copy2(tmp / "build" / "organism.json", final / "organism.json")
    return SHIPPED / FAMILY


def resolve_spec(spec: str) -> Path:
    """``organisms://natural/<model>`` (demo size) or ``organisms://natural-tiny/<model>`` -> the model directory."""
    name, _, model = spec[len("organisms://"):].strip("/").partition("/")
    if name not in SPECS or model not in MODELS:
        raise UserError(f"{spec!r}: expected organisms://natural/<model> or organisms://natural-tiny/<model> with "
                        f"model one of {', '.join(MODELS)}")
    return build(SPECS[name]) / model


def is_natural_spec(spec: object) -> bool:
    """True for ``organisms://natural[-tiny]/...`` and for a model directory of a natural build."""
    s = str(spec)
    if s.startswith("organisms://"):
        return s[len("organisms://"):].strip("/").partition("/")[0] in SPECS
    manifest = Path(s).expanduser().parent / "organism.json"
    try:
        return manifest.is_file() and io.read_json(manifest).get("family") == FAMILY
    except ValueError:
        return False
