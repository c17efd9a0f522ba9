"""``lm-diff init BASE FINETUNED``: a commented run config for a user's pair, written after the pair is checked.

Sizes come from the models' ``config.json`` and the capture token budget (docs/method.md#init-sizes):

- layer: the middle decoder layer, ``floor(n_layers / 2)`` (the seed set-up's choice, 21 of 42 for Gemma-2-9b);
- dictionary: ``expansion x d_model`` latents, the expansion growing with the budget (4 below 1M tokens, 8 below 5M,
  16 below 20M, 32 from 20M: the seed's 32 x 3584 at 20M), so each latent still sees enough tokens to be trained;
- k (BatchTopK active latents per token): ``d_model / 36`` within [8, 128] (100 at d = 3584, as in the seed set-up);
- dedicated latents: an eighth of the dictionary per model (``crosscoder.exclusive``, the 128 of 1024 both organism
  families recover their planted categories with; with a standard crosscoder their S and T sets stay empty or
  nearly so, docs/method.md#dedicated-latents);
- steps: two passes over the budget at the configured batch size, at least 200;
- schedule: learning-rate warmup over a tenth of the steps and the BatchTopK inference threshold from half of them
  (each at most the seed set-up's 1000 steps), a latent dead after half the budget's tokens without firing (at most
  10M): the defaults (1000, 1000, 10M) are the seed set-up's at 20M tokens, and below ~1M tokens a run ends before
  its warmup does (at 500k tokens: 488 steps, the learning rate never above half its value, training EV 0.50
  instead of 0.75 on the natural pair) and no latent can count as dead;
- context length: 1024 tokens, or the model's ``max_position_embeddings`` when that is smaller;
- chat template: on when the tokenizer has one, unless the suite's packaged items already carry it (the organism
  suites ``diff_demo`` and ``diff_natural`` store prompts as chat transcripts): lm-eval would wrap them twice;
- dtype: the checkpoint's ``torch_dtype`` (float32 if it names none); device: ``cuda`` when this machine sees a GPU.

Nothing is downloaded beyond what reading the two configs and tokenizers needs (hub ids use the hub cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from lm_diff.bench.suites import bench_task_manager, task_categories
from lm_diff.bench.task_data import chat_marker, chat_rendered_tasks
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import from_dict, resolve_config_path
from lm_diff.errors import UserError
from lm_diff.io import write_text
from lm_diff.models import _config_layers, _model_config, check_pair_early, model_pair

DEFAULT_SUITE = ("diff_leaderboard",)
DEFAULT_TOKENS = 20_000_000
BATCH_SIZE = 2048
CONTEXT_LENGTH = 1024

__all__ = ["DEFAULT_SUITE", "sizes", "render_config", "init_config"]


def sizes(d_model: int, n_layers: int, tokens: int) -> dict[str, int]:
    """The crosscoder and layer sizes of the module docstring for a model of width ``d_model``."""
    expansion = 4 if tokens < 1_000_000 else 8 if tokens < 5_000_000 else 16 if tokens < 20_000_000 else 32
    steps = max(200, 2 * tokens // BATCH_SIZE)
    return {"layer": n_layers // 2, "expansion": expansion, "dict_size": expansion * d_model,
            "k": int(min(128, max(8, round(d_model / 36)))), "exclusive": expansion * d_model // 8,
            "steps": steps, "batch_size": BATCH_SIZE,
            "warmup_steps": min(1000, steps // 10), "threshold_start_step": min(1000, steps // 2),
            "dead_tokens": min(10_000_000, max(BATCH_SIZE, tokens // 2))}


def _dtype(conf: Any) -> str:
    name = str(getattr(conf, "torch_dtype", None) or getattr(conf, "dtype", None) or "float32").replace("torch.", "")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def _device() -> str:
    try:
        import torch  # noqa: PLC0415 - heavy; only to see whether this machine has a GPU

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def _yaml_str(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(*, base: str, finetuned: str, d_model: int, n_layers: int, dtype: str, device: str, chat: bool,
                  suite: Sequence[str], categories: dict[str, str], uncategorised: Sequence[str], tokens: int,
                  max_positions: Optional[int] = None, chat_rendered: Sequence[str] = (),
                  marker: Optional[str] = None) -> str:
    """The commented YAML text (pure: every value passed in). ``chat_rendered``: the suite's tasks whose items
    already carry the chat template (``marker``), which turn ``apply_chat_template`` off."""
    s = sizes(d_model, n_layers, tokens)
    context = CONTEXT_LENGTH if not max_positions or max_positions >= CONTEXT_LENGTH else int(max_positions)
    context_note = ("" if context == CONTEXT_LENGTH
                    else f"   # the model's max_position_embeddings ({context}): longer documents are split")
    if chat and chat_rendered:
        named = ", ".join(list(chat_rendered)[:2]) + (" ..." if len(chat_rendered) > 2 else "")
        chat_line = (f"apply_chat_template: false   # the suite's items already carry the chat template ({marker!r} in "
                     f"{named}): lm-eval would wrap them in a second one")
    else:
        chat_line = (f"apply_chat_template: {'true' if chat else 'false'}   # "
                     f"{'the tokenizer has a chat template' if chat else 'the tokenizer has no chat template'}")
    by_cat: dict[str, list[str]] = {}
    for t, c in sorted(categories.items()):
        by_cat.setdefault(c, []).append(t)
    cat_lines = "".join(f"#   {c}: {', '.join(ts[:6])}{' ...' if len(ts) > 6 else ''}\n" for c, ts in sorted(by_cat.items()))
    unc = ""
    if uncategorised:
        unc = ("# These tasks have no category (no metadata.category in their group): map them below, or their score gaps\n"
               "# are shown without a category.\n" + "".join(f"#   - {t}\n" for t in uncategorised))
    overrides = "".join(f"    # {t}: knowledge\n" for t in list(uncategorised)[:3])
    return f"""# lm_diff run config written by `lm-diff init` for {base} vs {finetuned}.
# Check it with `lm-diff config THIS.yaml --explain`, size it with `lm-diff plan THIS.yaml --gpu h100`, then
# `lm-diff run THIS.yaml --out runs/NAME`.
name: {_yaml_str(Path(str(finetuned)).name or 'pair')}
models:
  base: {_yaml_str(base)}
  finetuned: {_yaml_str(finetuned)}
  dtype: {dtype}            # the checkpoint's torch_dtype
  device: {device}              # cuda when a GPU was visible to `lm-diff init`; cpu otherwise
design: direct
# d_model {d_model}, {n_layers} decoder layers: the middle layer.
layers: [{s['layer']}]
capture:
  # Capture corpus: plain web text (also the neutral grounding prompts) and chat conversations, equal shares. Both
  # are hub datasets: replace them with local files (txt / jsonl / parquet) to run offline.
  corpus:
    - {{path: HuggingFaceFW/fineweb, format: hf, weight: 1.0, max_docs: 200000}}
    - {{path: lmsys/lmsys-chat-1m, format: hf, text_field: conversation, weight: 1.0, chat: true, max_docs: 200000}}
  benchmark_prompts: true   # the scored items are captured too, rendered exactly as lm-eval scores them
  context_length: {context}{context_note}
  max_tokens: {tokens}     # the token budget the sizes below follow
crosscoder:
  architecture: batchtopk
  dict_size: {s['dict_size']}      # {s['expansion']} x d_model for a {tokens:,}-token budget
  k: {s['k']}                 # about d_model / 36 active latents per token
  exclusive: {s['exclusive']}      # dedicated latents per model, an eighth of the dictionary (docs/method.md#dedicated-latents)
  batch_size: {s['batch_size']}
  steps: {s['steps']}           # two passes over the budget
  warmup_steps: {s['warmup_steps']}        # a tenth of the steps, at most 1000
  threshold_start_step: {s['threshold_start_step']}   # BatchTopK inference threshold tracked from half the steps, at most 1000
  dead_tokens: {s['dead_tokens']}   # a latent is dead after half the budget's tokens without firing, at most 10M
benchmarks:
  tasks: [{', '.join(suite)}]
  {chat_line}
  # Categories of the suite's tasks (from the task groups' metadata.category):
{cat_lines.rstrip() or '#   (none)'}
{unc.rstrip()}
  task_categories: {{}}   # task -> category overrides for your own tasks, e.g.
{overrides.rstrip() or '    # my_task: knowledge'}
categories:
  # Latents are grounded on the suite's items that lm-eval does not score (after benchmarks.limit, or the tasks'
  # train/validation splits); categories with fewer than 20 such items use the built-in real-language prompts.
  grounding: benchmark
""".replace("\n\n", "\n")


def init_config(base: str, finetuned: str, *, suite: Optional[Sequence[str]] = None, out: Optional[str | Path] = None,
                tokens: int = DEFAULT_TOKENS, force: bool = False, trust_remote_code: bool = False) -> Path:
    """Check the pair (configs, causal LM, d_model, layers, tokenizer), resolve the suite's task categories offline,
    and write the config to ``out`` (default ``lm_diff_<finetuned>.yaml``). Returns the path written."""
    suite = list(suite or DEFAULT_SUITE)
    if tokens <= 0:
        raise UserError(f"--tokens must be positive, got {tokens}")
    out = Path(out) if out else Path(f"lm_diff_{Path(str(finetuned)).name or 'pair'}.yaml")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it or --out another path")
    cfg = from_dict({"models": {"base": str(base), "finetuned": str(finetuned), "trust_remote_code": trust_remote_code},
                     "benchmarks": {"tasks": suite}}, where="lm-diff init")
    pair = model_pair(cfg)
    tokenizer = check_pair_early(cfg, pair)
    conf = _model_config(cfg, pair.specs[0], pair.paths[0])
    d_model = getattr(conf, "hidden_size", None) or getattr(conf, "n_embd", None)
    n_layers = _config_layers(conf)
    if not d_model or not n_layers:
        raise UserError(f"the config of {base!r} names no hidden size or layer count; write the config by hand "
                        f"from {resolve_config_path('demo')}")
    tm = bench_task_manager(cfg)
    unknown = [t for t in suite if t not in tm.task_index]
    if unknown:
        raise UserError(f"--suite: unknown lm-eval task(s) {', '.join(unknown)} (list them with `lm-eval ls tasks`)")
    cats = task_categories(suite, tm, taxonomy=get_taxonomy(cfg))
    uncategorised = [t for t in suite if t not in cats and tm.task_index[t].kind.name != "GROUP"]
    marker = chat_marker(tokenizer)
    positions = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None)
    text = render_config(base=str(base), finetuned=str(finetuned), d_model=int(d_model), n_layers=int(n_layers),
                         dtype=_dtype(conf), device=_device(), chat=bool(getattr(tokenizer, "chat_template", None)),
                         suite=suite, categories=cats, uncategorised=uncategorised, tokens=int(tokens),
                         max_positions=int(positions) if isinstance(positions, int) else None,
                         chat_rendered=chat_rendered_tasks(suite, marker), marker=marker)
    write_text(out, text)
    return out
