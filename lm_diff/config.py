"""Run configuration: dataclasses with a docstring under each field, loaded from YAML and validated on load.

Every mistake gives one message naming the file, the key, what was expected and the close matches, e.g.
``configs/x.yaml: crosscoder.dict_sise is not a key; did you mean dict_size?``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from lm_diff.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelsConfig:
    base: str = "organisms://demo/base"
    """Reference model A: a local directory, a hub id, or ``organisms://SIZE/NAME`` for a built model organism."""
    finetuned: str = "organisms://demo/finetuned"
    """Compared model B (the fine-tune), in the same forms as ``base``."""
    anchor: Optional[str] = None
    """Optional pretrained anchor P for the anchored design: crosscoders (P, A) and (P, B)."""
    revision: Optional[str] = None
    """Hub revision used for every hub id (ignored for local paths)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype when loading the models."""
    device: str = "cpu"
    """Torch device for model forwards (``cpu``, ``cuda``, ``cuda:1``...)."""
    trust_remote_code: bool = False
    """Allow model repos to run their own code. Off unless you ask for it."""


@dataclass
class CorpusSource:
    path: str = "organisms:neutral"
    """Local file (txt/jsonl/parquet), a HF dataset name the user has, or ``organisms:GENRE`` (built-in generated text)."""
    format: Literal["auto", "txt", "jsonl", "parquet", "hf", "organisms"] = "auto"
    """File format; ``auto`` decides from the extension or the ``organisms:`` prefix."""
    text_field: str = "text"
    """Field holding the text in jsonl/parquet/hf rows."""
    label: Optional[str] = None
    """Source label stored per token (defaults to the file stem)."""
    weight: float = 1.0
    """Relative share of this source in the capture mixture."""
    chat: bool = False
    """Render each row with the model's chat template (rows are user/assistant turns or plain prompts)."""
    max_docs: Optional[int] = None
    """Read at most this many documents from the source."""


@dataclass
class CaptureConfig:
    corpus: list[CorpusSource] = field(default_factory=lambda: [CorpusSource()])
    """Local text mixed into the capture corpus."""
    benchmark_prompts: bool = True
    """Also capture the prompts of the benchmark suite (labelled by task and category)."""
    context_length: int = 128
    """Tokens per captured sequence (longer documents are split)."""
    max_tokens: int = 200_000
    """Token budget of the capture (BOS and padding excluded)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    shard_tokens: int = 65_536
    """Tokens per shard on disk (resume granularity)."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Storage dtype of activations (running statistics are always fp32)."""
    heldout_fraction: float = 0.05
    """Fraction of documents held out for evaluation metrics (chosen by hash of the document id)."""
    seed: int = 0
    """Seed for the corpus mixture order."""
    backend: Literal["nnsight", "hooks"] = "nnsight"
    """Capture forward: nnsight trace with early stop (default), or plain torch forward hooks (same activations)."""


@dataclass
class CrosscoderConfig:
    architecture: Literal["batchtopk", "l1"] = "batchtopk"
    """Sparsity: BatchTopK (default, Minder et al.) or the Anthropic decoder-norm-weighted L1 penalty."""
    dict_size: int = 1024
    """Number of latents L (paper grade: 32 x d_model)."""
    k: int = 32
    """BatchTopK: mean active latents per token."""
    k_initial: Optional[int] = None
    """BatchTopK: start k for linear annealing down to ``k`` (None = no annealing)."""
    k_anneal_steps: int = 0
    """BatchTopK: steps over which k anneals from ``k_initial`` to ``k``."""
    aux_alpha: float = 0.03125
    """BatchTopK: weight of the auxiliary dead-latent loss (1/32)."""
    dead_tokens: int = 10_000_000
    """A latent is dead after this many tokens without firing (aux loss, dead fraction)."""
    l1_coefficient: float = 1.0
    """L1: sparsity coefficient (lambda / mu)."""
    l1_loss: Literal["anthropic", "unsquared"] = "anthropic"
    """L1: squared-error Anthropic loss, or the crosscoder_learning fork's unsquared-L2 form."""
    lr: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 2048
    """Tokens per optimisation step."""
    steps: int = 2000
    """Optimisation steps."""
    warmup_steps: int = 1000
    """Linear learning-rate warmup steps."""
    decay_fraction: float = 0.2
    """Linear decay to zero over this final fraction of steps (0 = constant)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    normalisation: Literal["sqrt_d", "centre_scale", "none"] = "sqrt_d"
    """Per-model activation normalisation stored with the checkpoint: scale so E||x|| = sqrt(d), or centre then scale."""
    init_scale: float = 0.1
    """Initial decoder row norm (W_dec = W_enc^T, identical across models)."""
    seed: int = 0
    """Seed of the initialisation and data order."""
    shuffle_buffer: int = 65_536
    """Tokens in the streaming shuffle buffer."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints."""
    batchtopk_loss: Literal["unsquared", "mse"] = "unsquared"
    """BatchTopK reconstruction term: crosscoder_learning's unsquared L2 per model, or summed squared error."""
    threshold_start_step: int = 1000
    """BatchTopK: step from which the EMA inference threshold (beta 0.999) is tracked."""
    workers: int = 0
    """Crosscoders trained at once (seeds, identity control), each in its own process with threads/workers threads;
    0 = auto (up to 4, at most one per thread). Small crosscoders use two threads poorly, so on a 2-core machine two
    1-thread processes train ~1.5x faster than one after the other. Not part of the stage key."""
    exclusive: int = 0
    """Dedicated latents per model (0 = a standard crosscoder). With n > 0 the last n latents per model decode into
    that model only and the other latents are shared with one decoder tied across models, so every difference between
    the models must be carried by a dedicated latent (see docs/architecture.md, "dedicated latents")."""


@dataclass
class DiffConfig:
    fine_tune_only: float = 0.9
    """Delta-norm threshold for B-only latents (paper orientation: 1 = fine-tune only)."""
    base_only: float = 0.1
    """Delta-norm threshold for A-only latents."""
    shared_band: list[float] = field(default_factory=lambda: [0.4, 0.6])
    """Delta-norm band for shared latents."""
    nu_eps_max: float = 0.2
    """Latent scaling: keep B-only latents with nu_eps below this (removes Complete Shrinkage)."""
    nu_r_max: float = 0.5
    """Latent scaling: keep B-only latents with nu_r below this (removes Latent Decoupling)."""
    nu_stable: list[float] = field(default_factory=lambda: [-0.1, 2.0])
    """Ratios outside this range are flagged unstable."""
    scaling_tokens: int = 10_000_000
    """Tokens streamed for the latent-scaling sufficient statistics (capped by the store size)."""
    top_examples: int = 100
    """Top-activating windows stored per selected latent."""
    window: int = 32
    """Tokens per example window."""
    stream_batch_size: int = 4096
    """Tokens per batch when streaming the activation store in diff analyses (table, scaling, examples)."""
    drop_unstable: bool = False
    """Latent scaling: also require both ratios inside ``nu_stable`` for a latent to count as specific (off = paper rule)."""
    quantiles: int = 10
    """Activation quantiles sampled for quantile examples per selected latent (Delphi style)."""
    random_examples: int = 50
    """Random non-activating windows stored per selected latent."""


@dataclass
class AnnotatorConfig:
    endpoint: Optional[str] = None
    """OpenAI-compatible base URL (e.g. http://localhost:8000/v1); None with ``model`` set = local HF model."""
    model: Optional[str] = None
    """Model name at the endpoint, or a local HF model path."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never stored in configs)."""
    max_latents: int = 200
    """Annotate at most this many selected latents."""
    examples: int = 20
    """Activating examples shown per latent."""
    test_examples: int = 10
    """Held-out activating examples per latent for detection scoring (never shown to the explainer)."""
    non_activating: int = 10
    """Held-out non-activating examples per latent mixed into detection scoring."""
    f1_min: float = 0.7
    """Keep an explanation only if its detection F1 on the held-out mix is at least this (Delphi-style filter)."""
    timeout: float = 60.0
    """Seconds to wait for one endpoint response before giving up."""
    max_new_tokens: int = 512
    """Maximum tokens the LLM may generate per answer."""
    temperature: float = 0.0
    """Sampling temperature of the LLM (0 = greedy, reproducible)."""
    device: str = "cpu"
    """Torch device of a local HF annotator model (ignored for endpoints)."""
    cache: Optional[str] = None
    """JSONL cache of LLM responses keyed by prompt hash (None = the pipeline's stage directory, or no cache)."""
    seed: int = 0
    """Seed of the held-out example order shown to the detection scorer."""


@dataclass
class CategoriesConfig:
    taxonomy: str = "taxonomy.yaml"
    """Taxonomy file (relative to the config file, then to the packaged configs/)."""
    method: Literal["grounded", "llm", "both"] = "grounded"
    """Grounded enrichment (default, no LLM), an LLM annotator, or both (with Cohen's kappa)."""
    grounding: Optional[str] = None
    """JSONL of {text, category} labelled prompts disjoint from scored items (None = the built-in generated set)."""
    auroc_min: float = 0.75
    """Grounded assignment: minimum AUROC of category vs neutral max-activations."""
    specificity_min: float = 0.75
    """Grounded assignment: minimum AUROC of category vs the other categories' prompts (one-vs-rest), so a latent that
    fires on everything the labelled sets share (chat template, boilerplate) is not counted in every category. The
    default is the enrichment bar (auroc_min): a latent must separate c from the other categories as well as from
    neutral text; 0.5 switches the test off."""
    q: float = 0.05
    """Benjamini-Hochberg false discovery rate across latent x category tests."""
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    """LLM annotator settings (used when ``method`` is llm or both)."""


@dataclass
class BenchmarksConfig:
    tasks: list[str] = field(default_factory=lambda: ["diff_demo"])
    """lm-eval tasks or groups run on both models (with log_samples)."""
    limit: Optional[int] = None
    """Documents per task (same for both models)."""
    num_fewshot: Optional[int] = None
    """Few-shot examples (None = task default)."""
    batch_size: int = 16
    """lm-eval batch size."""
    apply_chat_template: bool = False
    """Apply the chat template in lm-eval (to both models or neither)."""
    include_path: list[str] = field(default_factory=list)
    """Extra task directories (lm_diff's own tasks are always included)."""
    task_categories: dict[str, str] = field(default_factory=dict)
    """Override task -> category mapping (otherwise read from each task's metadata)."""
    model: str = "hf"
    """lm-eval model backend (``--model``): ``hf`` (default), ``vllm``, ``hf-diff``, or any name in lm-eval's model
    registry. For several GPUs with accelerate use ``hf`` with ``model_args: {parallelize: true}``."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra lm-eval model arguments (``--model_args``), e.g. ``{parallelize: true}`` (hf) or ``{tensor_parallel_size: 2,
    gpu_memory_utilization: 0.8}`` (vllm). ``pretrained`` comes from ``models``; ``dtype`` defaults to ``models.dtype``."""
    confirm_run_unsafe_code: bool = False
    """Allow tasks marked ``unsafe_code`` (they execute model-written code, e.g. humaneval): off by default."""
    reuse: dict[str, str] = field(default_factory=dict)
    """Reuse existing ``lm_eval --output_path ... --log_samples`` runs instead of running lm-eval: ``{A: dir, B: dir}``
    (base and fine-tune; both or neither)."""


@dataclass
class StatsConfig:
    confidence: float = 0.95
    """Confidence level of every interval."""
    bootstrap: int = 10000
    """Bootstrap resamples (paired over documents; hierarchical over seeds and latents; methods B5: 10^4)."""
    permutations: int = 10000
    """Permutations for label-permutation nulls and association p-values (methods B3: 10^4; with 2000 the demo's q
    values near 0.05 moved by ±0.006 between resampling seeds)."""
    min_count: int = 5
    """Categories with n_S + n_T below this are marked insufficient."""
    seed: int = 0
    """Seed of resampling."""
    pool_seeds: bool = True
    """With several crosscoder seeds, the headline category shift pools the specific sets of all seeds, with clusters
    of matched latents (one feature found by several seeds) as the unit of the bootstrap CI and the permutation test;
    false = the first seed alone (Katz CI, Fisher test)."""
    cluster_min_cos: float = 0.7
    """Latents of two seeds whose Hungarian-matched decoder cosine is at least this are one cluster (pooled shift)."""


@dataclass
class ControlsConfig:
    identity: bool = True
    """Train an identity crosscoder (A, A) on a reduced budget: must yield ~0 exclusive latents."""
    identity_fraction: float = 0.5
    """Step budget of the identity control relative to the main crosscoder."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Crosscoder seeds for the reproducibility control (Hungarian matching across seeds)."""
    causal: bool = True
    """Ablate each category's fine-tune-specific latents in B and re-score its items."""
    identity_max_fraction: float = 0.005
    """Identity control passes when its specific (exclusive after scaling) latents are at most this fraction of live latents."""


@dataclass
class GatesConfig:
    ev_min: float = 0.7
    """Minimum explained variance per model."""
    delta_ce_max: float = 0.2
    """Maximum spliced cross-entropy increase (nats)."""
    dead_max: float = 0.5
    """Maximum dead-latent fraction."""


@dataclass
class ReportConfig:
    formats: list[str] = field(default_factory=lambda: ["json", "md", "html"])
    """Report writers to run (plugins may add more)."""
    latent_cards: int = 12
    """Latent cards shown in the report."""
    card_examples: int = 5
    """Top examples per latent card."""
    gates: GatesConfig = field(default_factory=GatesConfig)
    """Quality gates; a failing gate marks the run low-confidence."""


@dataclass
class RunConfig:
    name: str = "run"
    """Run name (used in report titles)."""
    models: ModelsConfig = field(default_factory=ModelsConfig)
    """The model pair (and optional anchor)."""
    design: Literal["direct", "anchored"] = "direct"
    """Direct crosscoder (A, B), or anchored: (P, A) and (P, B)."""
    layers: list[Union[int, str]] = field(default_factory=lambda: ["middle"])
    """Decoder layers whose residual output is captured (``middle`` = floor(L/2))."""
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    """Paired activation capture."""
    crosscoder: CrosscoderConfig = field(default_factory=CrosscoderConfig)
    """Crosscoder architecture and training."""
    diff: DiffConfig = field(default_factory=DiffConfig)
    """Latent selection thresholds and latent scaling."""
    categories: CategoriesConfig = field(default_factory=CategoriesConfig)
    """Capability categories."""
    benchmarks: BenchmarksConfig = field(default_factory=BenchmarksConfig)
    """Benchmark suite run on both models."""
    stats: StatsConfig = field(default_factory=StatsConfig)
    """Statistics settings."""
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    """Validation controls."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Report options."""

    # Set by the loader, not a YAML key.
    source: Optional[str] = field(default=None, repr=False, metadata={"internal": True})

    def validate(self, where: str = "config") -> None:
        _check_values(self, where)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def resolve_path(self, value: str) -> Path:
        """Resolve a path from the config: relative to the config file, then to the packaged configs/."""
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        candidates = []
        if self.source:
            candidates.append(Path(self.source).resolve().parent / p)
        candidates += [Path.cwd() / p, CONFIGS_DIR / p, packaged_configs_dir() / p]
        for c in candidates:
            if c.exists():
                return c
        return candidates[0]


def packaged_configs_dir() -> Path:
    """configs/ shipped inside the wheel (lm_diff/_configs) or the source tree's configs/."""
    here = Path(__file__).resolve().parent
    inside = here / "_configs"
    return inside if inside.exists() else CONFIGS_DIR


# ----------------------------------------------------------------------------------------------------------------------
# Loading and validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        name = " or ".join(_type_name(a) for a in args)
        return name + (" or null" if len(args) < len(typing.get_args(tp)) else "")
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg)}"
    if origin is dict:
        k, v = typing.get_args(tp) or (Any, Any)
        return f"a mapping of {_type_name(k)} to {_type_name(v)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(v, arg, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(k, kt, key, where): _convert(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _build(cls: type, data: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{where}: {full} is not a key{hint}")
        kwargs[key] = _convert(value, hints[key], full, where)
    return cls(**kwargs)


def _positive(where: str, key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: {key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_benchmarks(b: BenchmarksConfig, where: str) -> None:
    if not b.tasks:
        raise ConfigError(f"{where}: benchmarks.tasks must list at least one lm-eval task or group")
    if not b.model.strip():
        raise ConfigError(f"{where}: benchmarks.model must name an lm-eval model backend, e.g. hf or vllm")
    if "pretrained" in b.model_args:
        raise ConfigError(f"{where}: benchmarks.model_args.pretrained is set from models.base/models.finetuned; "
                          "remove it from benchmarks.model_args")
    if b.reuse and set(b.reuse) != {"A", "B"}:
        raise ConfigError(f"{where}: benchmarks.reuse must give both A (base) and B (fine-tune) run directories, "
                          f"got keys {sorted(b.reuse)}")


def _check_values(cfg: RunConfig, where: str) -> None:
    """Checks of impossible values (types were checked while building)."""
    for i, layer in enumerate(cfg.layers):
        if isinstance(layer, str) and layer != "middle":
            raise ConfigError(f"{where}: layers[{i}] must be an integer or 'middle', got {layer!r}")
        if isinstance(layer, int) and layer < 0:
            raise ConfigError(f"{where}: layers[{i}] must be >= 0, got {layer}")
    if not cfg.layers:
        raise ConfigError(f"{where}: layers must name at least one layer")
    if cfg.design == "anchored" and not cfg.models.anchor:
        raise ConfigError(f"{where}: design is 'anchored' but models.anchor is not set; set models.anchor or use design: direct")
    c = cfg.capture
    for key in ("context_length", "max_tokens", "batch_size", "shard_tokens"):
        _positive(where, f"capture.{key}", getattr(c, key))
    if not 0 <= c.heldout_fraction < 1:
        raise ConfigError(f"{where}: capture.heldout_fraction must be in [0, 1), got {c.heldout_fraction}")
    if not c.corpus and not c.benchmark_prompts:
        raise ConfigError(f"{where}: capture.corpus is empty and capture.benchmark_prompts is false: nothing to capture")
    for i, s in enumerate(c.corpus):
        _positive(where, f"capture.corpus[{i}].weight", s.weight)
    x = cfg.crosscoder
    for key in ("dict_size", "k", "lr", "batch_size", "steps", "shuffle_buffer", "checkpoint_every", "init_scale", "dead_tokens"):
        _positive(where, f"crosscoder.{key}", getattr(x, key))
    _positive(where, "crosscoder.workers", x.workers, allow_zero=True)
    for key in ("warmup_steps", "aux_alpha", "l1_coefficient", "grad_clip", "k_anneal_steps", "threshold_start_step"):
        _positive(where, f"crosscoder.{key}", getattr(x, key), allow_zero=True)
    if x.k > x.dict_size:
        raise ConfigError(f"{where}: crosscoder.k ({x.k}) must not exceed crosscoder.dict_size ({x.dict_size})")
    if x.k_initial is not None and x.k_initial < x.k:
        raise ConfigError(f"{where}: crosscoder.k_initial ({x.k_initial}) must be >= crosscoder.k ({x.k})")
    if not 0 <= x.decay_fraction <= 1:
        raise ConfigError(f"{where}: crosscoder.decay_fraction must be in [0, 1], got {x.decay_fraction}")
    d = cfg.diff
    if not 0 < d.base_only < d.fine_tune_only < 1:
        raise ConfigError(f"{where}: diff.base_only < diff.fine_tune_only must both lie in (0, 1), got {d.base_only}, {d.fine_tune_only}")
    for key in ("shared_band", "nu_stable"):
        band = getattr(d, key)
        if len(band) != 2 or band[0] >= band[1]:
            raise ConfigError(f"{where}: diff.{key} must be [low, high] with low < high, got {band}")
    _positive(where, "diff.scaling_tokens", d.scaling_tokens)
    for key in ("stream_batch_size", "quantiles", "top_examples", "window"):
        _positive(where, f"diff.{key}", getattr(d, key))
    _positive(where, "diff.random_examples", d.random_examples, allow_zero=True)
    k = cfg.categories
    if not 0.5 <= k.auroc_min <= 1:
        raise ConfigError(f"{where}: categories.auroc_min must be in [0.5, 1], got {k.auroc_min}")
    if not 0.5 <= k.specificity_min <= 1:
        raise ConfigError(f"{where}: categories.specificity_min must be in [0.5, 1] (0.5 = off), got {k.specificity_min}")
    if not 0 < k.q < 1:
        raise ConfigError(f"{where}: categories.q must be in (0, 1), got {k.q}")
    if k.method in ("llm", "both") and not k.annotator.model:
        raise ConfigError(f"{where}: categories.method is {k.method!r} but categories.annotator.model is not set")
    an = k.annotator
    for key in ("max_latents", "examples", "test_examples", "timeout", "max_new_tokens"):
        _positive(where, f"categories.annotator.{key}", getattr(an, key))
    for key in ("non_activating", "temperature"):
        _positive(where, f"categories.annotator.{key}", getattr(an, key), allow_zero=True)
    if not 0 <= an.f1_min <= 1:
        raise ConfigError(f"{where}: categories.annotator.f1_min must be in [0, 1], got {an.f1_min}")
    _check_benchmarks(cfg.benchmarks, where)
    s = cfg.stats
    if not 0 < s.confidence < 1:
        raise ConfigError(f"{where}: stats.confidence must be in (0, 1), got {s.confidence}")
    for key in ("bootstrap", "permutations"):
        _positive(where, f"stats.{key}", getattr(s, key))
    if not 0 < s.cluster_min_cos <= 1:
        raise ConfigError(f"{where}: stats.cluster_min_cos must be in (0, 1], got {s.cluster_min_cos}")
    if not cfg.controls.seeds:
        raise ConfigError(f"{where}: controls.seeds must list at least one seed")
    if not 0 <= cfg.controls.identity_max_fraction < 1:
        raise ConfigError(f"{where}: controls.identity_max_fraction must be in [0, 1), got {cfg.controls.identity_max_fraction}")
    if not 0 < cfg.controls.identity_fraction <= 1:
        raise ConfigError(f"{where}: controls.identity_fraction must be in (0, 1], got {cfg.controls.identity_fraction}")


def from_dict(data: dict, where: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a plain mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, got {type(data).__name__}")
    cfg = _build(RunConfig, data, "", where)
    cfg.validate(where)
    return cfg


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or a name of a packaged config (``demo`` -> configs/demo.yaml)."""
    p = Path(path)
    if p.exists():
        return p
    for base in (CONFIGS_DIR, packaged_configs_dir()):
        for cand in (base / p, base / f"{p}.yaml"):
            if cand.exists():
                return cand
    raise ConfigError(f"{path}: config file not found; pass a YAML path or a packaged name such as 'demo'")


def load_config(path: str | Path, overrides: Optional[dict] = None) -> RunConfig:
    """Load ``path`` (YAML), apply dotted ``overrides`` ({"crosscoder.k": 8}), validate, return the RunConfig."""
    import yaml

    p = resolve_config_path(path)
    where = str(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{loc}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: cannot override {dotted}: {part} is not a mapping")
        node[parts[-1]] = value
    cfg = from_dict(data, where)
    cfg.source = str(p)
    return cfg


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source), for ``lm-diff config --explain``."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
            if isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = b.value.value.strip()
    return docs
