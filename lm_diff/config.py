"""Run configuration: dataclasses with a docstring under each field, loaded from YAML and validated on load.

Every mistake gives one message naming the file, the key, what was expected and the close matches, e.g.
``configs/x.yaml: crosscoder.dict_sise is not a key; did you mean dict_size?``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from lm_diff.config_schema import _build, _convert, _positive, _type_name, field_docs
from lm_diff.config_sections import CrosscoderConfig, DiffConfig, ModelsConfig, StatsConfig, check_sections
from lm_diff.errors import ConfigError

# re-exported: every ``from lm_diff.config import X`` of before the split keeps working
__all__ = ["CONFIGS_DIR", "AnnotatorConfig", "BenchmarksConfig", "CaptureConfig", "CategoriesConfig", "ConfigError",
           "ControlsConfig", "CorpusSource", "CrosscoderConfig", "DiffConfig", "GatesConfig", "ModelsConfig",
           "ReportConfig", "RunConfig", "StatsConfig", "_build", "_convert", "_type_name", "field_docs", "from_dict",
           "load_config", "packaged_configs_dir", "resolve_config_path"]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    simultaneous: bool = False
    """Forward each batch through every model at once (all models resident). Default: model by model, one resident
    at a time, over the same token ids; both write the same store."""



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
    """Grounding prompts: a JSONL of {text, category} rows disjoint from the scored items, `builtin` (the real-language
    set shipped for the default taxonomy, rendered with the model's chat template), or `organisms` (the demo organisms'
    set). Unset: `organisms` when both models are organisms, `builtin` otherwise."""
    grounding_per_category: Optional[int] = None
    """At most this many grounding prompts per category (and for neutral), the first ones in file order (None = all):
    bounds the capture tokens the grounding set takes."""
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
    formats: list[str] = field(default_factory=lambda: ["json", "md", "html", "neuronpedia"])
    """Report writers to run (neuronpedia: the latent export; plugins may add more)."""
    latent_cards: int = 12
    """Latent cards per set in report.md (report.html shows every categorised latent)."""
    card_examples: int = 5
    """Top examples per latent (quantile-sampled ones come in addition)."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Validation (the machinery lives in lm_diff.config_schema)


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
    check_sections(cfg, where)
    k = cfg.categories
    if not 0.5 <= k.auroc_min <= 1:
        raise ConfigError(f"{where}: categories.auroc_min must be in [0.5, 1], got {k.auroc_min}")
    if k.grounding_per_category is not None:
        _positive(where, "categories.grounding_per_category", k.grounding_per_category)
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
    for key in ("confidence", "power"):
        if not 0 < getattr(s, key) < 1:
            raise ConfigError(f"{where}: stats.{key} must be in (0, 1), got {getattr(s, key)}")
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
