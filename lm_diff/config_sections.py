"""The run-config sections of the capture, models, benchmarks, crosscoder, diff and statistics stages and their value checks.
``lm_diff.config`` re-exports them: ``from lm_diff.config import CrosscoderConfig`` keeps working."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from lm_diff.config_schema import ConfigError, _device, _finite, _positive


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
    streaming: bool = False
    """Train the crosscoders on activations computed on the fly (every model resident, forwards recomputed each
    epoch) instead of from the activation store: for stores that do not fit on disk. Only ``stored_tokens`` are
    captured to disk, for the analysis stages."""
    stored_tokens: int = 2_000_000
    """With ``streaming``: tokens captured to disk for the stages after training (benchmark and grounding prompts
    first, then the corpus); training streams all ``max_tokens``. Ignored without ``streaming``."""



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
    """Torch device for model forwards (``cpu``, ``cuda``, ``cuda:1``, ``mps``); also the crosscoder's and the diff
    stage's device unless ``crosscoder.device`` says otherwise."""
    trust_remote_code: bool = False
    """Allow model repos to run their own code. Off unless you ask for it."""



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
    fewshot_as_multiturn: bool = True
    """With the chat template: each few-shot example its own chat turn (lm-eval's default); false = one user turn."""
    system_instruction: Optional[str] = None
    """System prompt before every request (lm-eval ``--system_instruction``; capture renders items the same way)."""
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
    device: str = "models"
    """Torch device of the crosscoder: its training and every diff computation on it (latent table, latent scaling,
    spliced metrics, quality, controls, examples): ``models`` (the default: the same as ``models.device``, resolved on
    load, so one setting moves the whole run), or ``cpu``, ``cuda``, ``cuda:N``, ``mps``. Checkpoints load onto it.
    Under ``torchrun`` with CUDA each rank takes ``cuda:LOCAL_RANK`` (NCCL); other devices use gloo."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Operand dtype of the training GEMMs (encoder, decoder and their gradients): ``auto`` = bfloat16 on CUDA, float32
    elsewhere. Accumulation, biases, top-k selection, losses, statistics and the Adam state stay float32; float32 on
    the CPU is the historical arithmetic, bit for bit."""
    exclusive: int = 0
    """Dedicated latents per model (0 = a standard crosscoder). With n > 0 the last n latents per model decode into
    that model only and the other latents are shared with one decoder tied across models, so every difference between
    the models must be carried by a dedicated latent (docs/method.md#dedicated-latents)."""



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


def check_sections(cfg: Any, where: str) -> None:
    """Value checks of ``capture``, ``models``, ``crosscoder`` and ``diff`` (types were checked while building); resolves
    ``crosscoder.device: models`` to ``models.device``."""
    for section in ("models", "crosscoder", "diff"):
        _finite(where, section, getattr(cfg, section))
    c = cfg.capture
    for key in ("context_length", "max_tokens", "batch_size", "shard_tokens", "stored_tokens"):
        _positive(where, f"capture.{key}", getattr(c, key))
    if not 0 <= c.heldout_fraction < 1:
        raise ConfigError(f"{where}: capture.heldout_fraction must be in [0, 1), got {c.heldout_fraction}")
    if not c.corpus and not c.benchmark_prompts:
        raise ConfigError(f"{where}: capture.corpus is empty and capture.benchmark_prompts is false: nothing to capture")
    for i, s in enumerate(c.corpus):
        _positive(where, f"capture.corpus[{i}].weight", s.weight)
    _device(where, "models.device", cfg.models.device)
    if cfg.crosscoder.device == "models":
        cfg.crosscoder.device = cfg.models.device
    _device(where, "crosscoder.device", cfg.crosscoder.device)
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


@dataclass
class StatsConfig:
    confidence: float = 0.95
    """Confidence level of every interval."""
    bootstrap: int = 10000
    """Bootstrap resamples (paired over documents; hierarchical over seeds and latents; docs/method.md#permutation-null: 10^4)."""
    permutations: int = 10000
    """Permutations for label-permutation nulls and association p-values (docs/method.md#permutation-null: 10^4; with 2000 the demo's q
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
    power: float = 0.8
    """Power at which the report states each category's minimum detectable shift (docs/method.md#minimum-detectable-shift)."""
    fcr_intervals: bool = True
    """Widen the category-shift intervals to the false-coverage-rate level 1 − R·α/m (R of m categories at
    q ≤ 1 − confidence; docs/method.md#fcr-intervals), so an interval that excludes no change means what a discovery
    means; false = every interval at ``confidence``."""
