"""``lm-diff plan CONFIG``: what a run will cost, per stage, before a GPU-hour is spent.

From the config and the models' ``config.json`` only (no weights, no hub): a local model directory's config.json, a
``--model-config`` file (used for every model), or the built-in table ``KNOWN`` of the architectures in
configs/gemma.yaml. For each stage: FLOPs, wall time on the named accelerator (FLOPs / (peak x utilisation); both are
printed), peak device memory, host memory and disk. docs/gpu.md works the numbers out by hand for configs/gemma.yaml.

Counting rules (the docs derive each one):

- Forward FLOPs per token = 2 x (linear weights of the layers that run) + attention scores 4 x (mean context) x
  heads x head_dim per layer. Capture runs layers 0..max(layers) (it stops after the last captured layer);
  benchmarks run the whole model and the LM head.
- Crosscoder training per token, M models, width D, L latents, k active: encoder forward + weight gradient 4MDL;
  a dense decoder (what ``crosscoder.model`` does today) forward, input gradient and weight gradient 6MDL, so 10MDL;
  a sparse decoder (k rows per token) 6kMD, so 4MDL + 6kMD.
- Benchmark tokens per model: characters / 4 of the packaged documents of every leaf task the suite reaches, groups
  followed (``diff_gemma`` reaches ``diff_probes``): a task's JSONL rows, a perplexity probe's scored text (one
  rolling forward per document window); tasks on hub datasets count 0 (:mod:`lm_diff.bench.task_data`).
- Memory with one model resident (capture's default): its weights in ``models.dtype`` plus one batch's workspace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from lm_diff.bench.task_data import packaged_documents
from lm_diff.capture.disk import SIDE_BYTES, store_bytes
from lm_diff.capture.store import META_BYTES_PER_TOKEN
from lm_diff.config import RunConfig
from lm_diff.console import out
from lm_diff.errors import UserError
from lm_diff.models import require_pair, resolve_layers

# Architectures of configs/gemma.yaml (config.json values), so `plan` works offline without the weights.
_GEMMA2_9B = {"model_type": "gemma2", "hidden_size": 3584, "num_hidden_layers": 42, "intermediate_size": 14336,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
              "tie_word_embeddings": True}
KNOWN: dict[str, dict[str, Any]] = {
    "google/gemma-2-9b": _GEMMA2_9B,
    "google/gemma-2-9b-it": _GEMMA2_9B,
    "princeton-nlp/gemma-2-9b-it-SimPO": _GEMMA2_9B,
    "google/gemma-2-2b": {"model_type": "gemma2", "hidden_size": 2304, "num_hidden_layers": 26,
                          "intermediate_size": 9216, "num_attention_heads": 8, "num_key_value_heads": 4,
                          "head_dim": 256, "vocab_size": 256000, "tie_word_embeddings": True},
}


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_bf16: float
    """Dense bf16/fp16 tensor-core FLOP/s (datasheet, no sparsity)."""
    peak_fp32: float
    """Dense fp32 FLOP/s without TF32 (torch's default for fp32 matmuls)."""
    memory_bytes: float


ACCELERATORS = {
    "h100": Accelerator("NVIDIA H100 SXM", 989e12, 67e12, 80e9),
    "h200": Accelerator("NVIDIA H200 SXM", 989e12, 67e12, 141e9),
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 312e12, 19.5e12, 80e9),
    "l4": Accelerator("NVIDIA L4", 121e12, 30.3e12, 24e9),
    "cpu": Accelerator("CPU (nominal 16-core AVX-512)", 1e12, 1e12, 0.0),
}
# Fraction of peak each kind of work reaches (assumed; printed with the plan).
UTILISATION = {"forward": 0.4, "train": 0.4, "diff": 0.3}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated: bool = True
    tied: bool = True

    @classmethod
    def from_config(cls, c: dict, where: str) -> "Arch":
        c = c.get("text_config", c) if "hidden_size" not in c else c
        g = lambda *keys: next((c[k] for k in keys if isinstance(c.get(k), int)), None)  # noqa: E731
        hidden, layers = g("hidden_size", "n_embd", "d_model"), g("num_hidden_layers", "n_layer", "num_layers")
        heads = g("num_attention_heads", "n_head")
        if not (hidden and layers and heads):
            raise UserError(f"{where}: no hidden_size / num_hidden_layers / num_attention_heads; pass the model's "
                            f"config.json with --model-config")
        inter = g("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
        gated = c.get("model_type") not in ("gpt2", "gpt_neox", "opt", "gptj")
        return cls(hidden, layers, inter, heads, g("num_key_value_heads") or heads,
                   g("head_dim") or hidden // heads, g("vocab_size") or 0, gated, bool(c.get("tie_word_embeddings", True)))

    def layer_params(self) -> int:
        """Linear weights of one decoder layer (q, k, v, o and the MLP; norms are negligible)."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attn + (3 if self.gated else 2) * self.hidden * self.intermediate

    def params(self) -> int:
        return self.layers * self.layer_params() + self.vocab * self.hidden * (1 if self.tied else 2)

    def forward_flops(self, n_layers: int, context: int, head: bool = False) -> float:
        """FLOPs per token through ``n_layers`` layers at mean context (context + 1) / 2 (+ the LM head)."""
        attn = 4 * (context + 1) / 2 * self.heads * self.head_dim
        return n_layers * (2 * self.layer_params() + attn) + (2 * self.vocab * self.hidden if head else 0)


def _arch_for(spec: str, model_config: Optional[str]) -> Arch:
    if model_config:
        p = Path(model_config).expanduser()
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise UserError(f"--model-config {model_config!r}: no such file; pass a model's config.json")
        return Arch.from_config(json.loads(p.read_text(encoding="utf-8")), str(p))
    if spec in KNOWN:
        return Arch.from_config(KNOWN[spec], spec)
    if spec.startswith("organisms://"):
        size, _, name = spec[len("organisms://"):].strip("/").partition("/")
        local = DATA / "organisms" / size / name
    else:
        local = Path(spec).expanduser()
    if (local / "config.json").is_file():
        return Arch.from_config(json.loads((local / "config.json").read_text(encoding="utf-8")), str(local))
    raise UserError(f"plan: no config.json for model {spec!r} (offline there is no hub); pass a local model directory, "
                    f"--model-config path/to/config.json, or one of the built-in architectures: {', '.join(KNOWN)}")


def _stage(name: str, flops: float, peak: float, util: float, device: float, host: float, disk: float,
           **notes: Any) -> dict:
    seconds = flops / (peak * util) if flops else 0.0
    return {"stage": name, "flops": float(flops), "seconds": seconds, "device_memory_bytes": int(device),
            "host_memory_bytes": int(host), "disk_bytes": int(disk), **notes}


@dataclass(frozen=True)
class BenchTokens:
    """What the benchmark stage forwards per model, from the packaged documents of the suite."""

    tokens: int
    """Every packaged document's tokens (the probes' included)."""
    probe_tokens: int
    """The perplexity probes' part: the tokens of their scored text."""
    probe_documents: int
    """The perplexity probes' documents (one rolling request each)."""


def _bench_tokens(cfg: RunConfig) -> BenchTokens:
    """Rough benchmark tokens per model: characters / 4 of the packaged documents of every leaf task the suite reaches
    (groups followed, as ``diff_gemma`` → ``diff_probes``; ``benchmarks.limit`` documents per task), 0 for a task on a
    hub dataset. A multiple-choice or generation task counts its JSONL rows; a perplexity probe
    (``loglikelihood_rolling``) its scored text: lm-eval splits a document into windows of the model's length and runs
    one forward per window, and the windows' inputs hold the text's tokens once."""
    b = cfg.benchmarks
    chars = probe_chars = probe_docs = 0
    for t in packaged_documents(b.tasks, [cfg.resolve_path(p) for p in b.include_path]):
        texts = t.texts[:b.limit] if b.limit else t.texts
        n = sum(len(x) for x in texts)
        chars += n
        if t.output_type == "loglikelihood_rolling":
            probe_chars += n
            probe_docs += len(texts)
    return BenchTokens(chars // 4, probe_chars // 4, probe_docs)


def plan(cfg: RunConfig, gpu: str = "h100", model_config: Optional[str] = None) -> dict:
    """Per-stage FLOPs, seconds, device / host memory and disk for ``cfg`` on accelerator ``gpu``."""
    if gpu not in ACCELERATORS:
        raise UserError(f"--gpu {gpu!r}: choose one of {', '.join(ACCELERATORS)}")
    acc = ACCELERATORS[gpu]
    require_pair(cfg)
    m = cfg.models
    specs = [m.anchor, m.base, m.finetuned] if cfg.design == "anchored" else [m.base, m.finetuned]
    arch = _arch_for(specs[0], model_config)
    for s in specs[1:]:
        if _arch_for(s, model_config) != arch:
            raise UserError(f"plan: {s!r} has another architecture than {specs[0]!r}; a crosscoder needs equal shapes")
    M, D, wbytes = len(specs), arch.hidden, DTYPE_BYTES[m.dtype]
    peak_fwd = acc.peak_fp32 if m.dtype == "float32" else acc.peak_bf16
    c, x = cfg.capture, cfg.crosscoder
    layers = resolve_layers(cfg.layers, arch.layers)
    weights = arch.params() * wbytes
    B, T = c.batch_size, c.context_length
    workspace = B * T * (4 * D + 3 * arch.intermediate) * wbytes + B * arch.heads * T * T * 4
    resident = M if c.simultaneous else 1
    stages = []

    bench = _bench_tokens(cfg)
    bench_tok = bench.tokens
    b_ws = cfg.benchmarks.batch_size * T * (4 * D + 3 * arch.intermediate + arch.vocab) * wbytes
    stages.append(_stage("benchmarks", 2 * bench_tok * arch.forward_flops(arch.layers, T, head=True), peak_fwd,
                         UTILISATION["forward"], weights + b_ws, weights, 0, models=2, tokens_per_model=bench_tok,
                         probe_tokens_per_model=bench.probe_tokens, probe_documents=bench.probe_documents))

    tokens = c.max_tokens
    cap_flops = tokens * M * arch.forward_flops(layers[-1] + 1, T)
    store = store_bytes(tokens, M, len(layers), D, c.dtype) + SIDE_BYTES
    shard_fp32 = c.shard_tokens * len(layers) * D * 4
    shard_parts = store_bytes(c.shard_tokens, M, len(layers), D, c.dtype)
    stages.append(_stage("capture", cap_flops, peak_fwd, UTILISATION["forward"], resident * weights + workspace,
                         resident * shard_fp32 + shard_parts, store + (0 if c.simultaneous else shard_parts),
                         tokens=tokens, models=M, models_resident=resident, layers_run=layers[-1] + 1,
                         flops_per_token_per_model=arch.forward_flops(layers[-1] + 1, T),
                         store_bytes=store_bytes(tokens, M, len(layers), D, c.dtype)))

    pairs = ["PA", "PB"] if cfg.design == "anchored" else ["AB"]
    jobs = [(f"train {p} seed {s}", 1.0) for p in pairs for s in cfg.controls.seeds]
    if cfg.controls.identity:
        jobs.append(("train identity AA", cfg.controls.identity_fraction))
    Mx, L, k = 2, x.dict_size, x.k
    dense, sparse = 10 * Mx * D * L, 4 * Mx * D * L + 6 * k * Mx * D
    params = 2 * Mx * D * L + L + Mx * D
    act = x.batch_size * L * 4
    shard_all = c.shard_tokens * M * D * DTYPE_BYTES[c.dtype]
    buffer = 2 * (x.shuffle_buffer + c.shard_tokens) * Mx * D * DTYPE_BYTES[c.dtype]
    # The trainer's GEMM operands are bf16 on a GPU unless crosscoder.precision says float32 (crosscoder/train.py).
    bf16_train = acc.memory_bytes > 0 and x.precision in ("auto", "bfloat16")
    train_peak = acc.peak_bf16 if bf16_train else acc.peak_fp32
    for name, frac in jobs:
        steps = max(1, int(round(x.steps * frac)))
        ntok = steps * x.batch_size
        stages.append(_stage(name, ntok * dense, train_peak, UTILISATION["train"], 4 * params * 4 + 4 * act,
                             shard_all + buffer, 4 * params * 4, tokens=ntok, flops_per_token=dense,
                             flops_per_token_sparse_decoder=sparse, seconds_sparse_decoder=ntok * sparse /
                             (train_peak * UTILISATION["train"])))

    n_cc = len(pairs) * len(cfg.controls.seeds) + int(cfg.controls.identity)
    diff_flops = n_cc * cfg.diff.scaling_tokens * 4 * Mx * D * L
    stages.append(_stage("diff", diff_flops, acc.peak_fp32, UTILISATION["diff"], params * 4 + 2 * act,
                         shard_all + buffer, n_cc * cfg.diff.top_examples * L * 64, crosscoders=n_cc))
    stages.append(_stage("categorize, link, report", 0.0, acc.peak_fp32, 1.0, 0, 2e9, 50e6))

    total = {k2: sum(s[k2] for s in stages) for k2 in ("flops", "seconds")}
    total.update(device_memory_bytes=max(s["device_memory_bytes"] for s in stages),
                 host_memory_bytes=max(s["host_memory_bytes"] for s in stages),
                 # kept: everything but the training checkpoints; one checkpoint (model + Adam moments) in flight
                 disk_bytes=sum(s["disk_bytes"] for s in stages if not s["stage"].startswith("train"))
                 + len(jobs) * params * 4 + 3 * params * 4)
    fits = acc.memory_bytes == 0 or total["device_memory_bytes"] <= acc.memory_bytes
    return {
        "config": cfg.name, "design": cfg.design, "models": specs,
        "accelerator": {"name": gpu, "description": acc.name, "peak_bf16_flops": acc.peak_bf16,
                        "peak_fp32_flops": acc.peak_fp32, "memory_bytes": acc.memory_bytes,
                        "utilisation": dict(UTILISATION), "forward_dtype": m.dtype,
                        "train_dtype": "bfloat16" if bf16_train else "float32"},
        "architecture": {**arch.__dict__, "params": arch.params(), "layer_params": arch.layer_params(),
                         "layers_captured": layers},
        "stages": stages, "total": total, "fits_device_memory": fits,
        "notes": ["capture keeps one model resident (capture.simultaneous: false)" if not c.simultaneous else
                  "capture holds every model at once (capture.simultaneous: true)",
                  f"per-token store metadata: {META_BYTES_PER_TOKEN} bytes",
                  ("train: bf16 GEMM operands, fp32 accumulation and optimizer state" if bf16_train else
                   "train: fp32 without TF32") + "; the sparse-decoder figures are what a k-sparse decoder would cost",
                  "diff: latent table and scaling run fp32"],
    }


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _fmt_time(s: float) -> str:
    return f"{s / 3600:,.2f} h" if s >= 3600 else (f"{s / 60:,.1f} min" if s >= 60 else f"{s:,.1f} s")


def render(p: dict) -> list[list[str]]:
    """Table rows (header first) for the terminal."""
    rows = [["stage", "FLOPs", "time", "device mem", "host mem", "disk"]]
    for s in [*p["stages"], {**p["total"], "stage": "total (time, flops: sum; memory: peak)"}]:
        rows.append([s["stage"], f"{s['flops']:.3g}" if s["flops"] else "-", _fmt_time(s["seconds"]),
                     _fmt_bytes(s["device_memory_bytes"]), _fmt_bytes(s["host_memory_bytes"]),
                     _fmt_bytes(s["disk_bytes"])])
    return rows


def summary_lines(p: dict) -> list[str]:
    a = p["accelerator"]
    u = ", ".join(f"{k} {v:.0%}" for k, v in a["utilisation"].items())
    lines = [f"{p['config']}: {p['design']} design, {len(p['models'])} models, "
             f"{p['architecture']['params'] / 1e9:.2f} B parameters each",
             f"accelerator {a['description']}: peak {a['peak_bf16_flops'] / 1e12:g} TFLOP/s bf16, "
             f"{a['peak_fp32_flops'] / 1e12:g} TFLOP/s fp32; utilisation assumed: {u}"]
    if not p["fits_device_memory"]:
        lines.append(f"warning: the peak device memory exceeds the accelerator's {a['memory_bytes'] / 1e9:g} GB")
    return lines + [f"note: {n}" for n in p["notes"]]


def print_plan(p: dict, as_json: bool = False) -> None:
    """The plan as one JSON object, or summary lines and a table."""
    if as_json:
        print(json.dumps(p, indent=2))
        return
    con = out()
    for line in summary_lines(p):
        con.print(line, soft_wrap=True)
    rows = render(p)
    table = Table(title=f"lm-diff plan ({p['accelerator']['name']})")
    for i, head in enumerate(rows[0]):
        table.add_column(head, justify="left" if i == 0 else "right")
    for r in rows[1:]:
        table.add_row(*r)
    con.print(table)


__all__ = ["print_plan", "ACCELERATORS", "KNOWN", "UTILISATION", "Arch", "plan", "render", "summary_lines"]
