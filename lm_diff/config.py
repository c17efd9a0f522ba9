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
from lm_diff.config_sections import (
    BenchmarksConfig,
    CaptureConfig,
    CorpusSource,
    CrosscoderConfig,
    DiffConfig,
    ModelsConfig,
    StatsConfig,
    _check_benchmarks,
    check_sections,
)
from lm_diff.errors import ConfigError

# re-exported: every ``from lm_diff.config import X`` of before the split keeps working
__all__ = ["CONFIGS_DIR", "AnnotatorConfig", "BenchmarksConfig", "CaptureConfig", "CategoriesConfig", "ConfigError",
           "ControlsConfig", "CorpusSource", "CrosscoderConfig", "DiffConfig", "GatesConfig", "ModelsConfig",
           "ReportConfig", "RunConfig", "StatsConfig", "_build", "_convert", "_type_name", "field_docs", "from_dict",
           "load_config", "packaged_configs_dir", "resolve_config_path"]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    """Grounding prompts: `benchmark` (the suite's items that are not scored, rendered as lm-eval scores them; neutral
    prompts from the capture corpus's plain text), `builtin` (the real-language set shipped for the default taxonomy,
    rendered with the model's chat template), `organisms` (the demo organisms' set), or a JSONL of {text, category}
    rows disjoint from the scored items. Unset: `organisms` when both models are organisms, `benchmark` otherwise."""
    grounding_per_category: Optional[int] = None
    """At most this many grounding prompts per category (and for neutral), the first ones in file order (None = all):
    bounds the capture tokens the grounding set takes."""
    benchmark_min_items: int = 20
    """`benchmark` grounding: a category with fewer held-out benchmark items than this is grounded on the built-in
    real-language prompts instead (the report says which)."""
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
    models_given: bool = field(default=True, repr=False, metadata={"internal": True})

    def validate(self, where: str = "config") -> None:
        _check_values(self, where)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        d.pop("models_given", None)
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
    check_sections(cfg, where)
    k = cfg.categories
    if not 0.5 <= k.auroc_min <= 1:
        raise ConfigError(f"{where}: categories.auroc_min must be in [0.5, 1], got {k.auroc_min}")
    if k.grounding_per_category is not None:
        _positive(where, "categories.grounding_per_category", k.grounding_per_category)
    _positive(where, "categories.benchmark_min_items", k.benchmark_min_items)
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
    data, given = _demo_models(data, where)
    cfg = _build(RunConfig, data, "", where)
    cfg.models_given = given
    cfg.validate(where)
    return cfg


def _demo_models(data: dict, where: str) -> tuple[dict, bool]:
    """``models: demo`` asks for the demo organisms (the ModelsConfig defaults); a pair is given when ``models``
    names both ``base`` and ``finetuned`` (one of them alone is refused here). Without a pair the config still loads
    (report / ci configs set only statistics), and a stage that needs the pair refuses it (``models.model_pair``)."""
    m = data.get("models")
    if m == "demo":
        return {**data, "models": {}}, True
    named = [k for k in ("base", "finetuned") if isinstance(m, dict) and m.get(k)]
    if len(named) == 1:
        missing = "finetuned" if named == ["base"] else "base"
        raise ConfigError(f"{where}: models.{missing} is not set; name the model (a hub id or a local folder), "
                          "or write models: demo for the demo organisms")
    return data, len(named) == 2


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
