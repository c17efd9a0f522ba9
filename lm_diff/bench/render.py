"""How a task item becomes the text a model reads: one set of rendering settings for scoring and capture.

lm-eval renders every request with ``Task.fewshot_context(doc, num_fewshot, system_instruction, apply_chat_template,
fewshot_as_multiturn, chat_template, gen_prefix)`` after ``simple_evaluate`` has set each task's few-shot count and
sampler seed. :class:`PromptFormat` holds those settings once; :meth:`PromptFormat.scoring_kwargs` passes them to
``simple_evaluate`` (scoring) and :func:`render_items` calls ``fewshot_context`` with the same values in the same
document order (capture, benchmark-derived grounding), so the captured text of an item is the text it was scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

from lm_diff.errors import UserError

__all__ = ["PromptFormat", "format_of", "chat_template_fn", "strip_bos", "prepare_task", "render_docs", "render_items"]


@dataclass(frozen=True)
class PromptFormat:
    """The settings lm-eval renders a request with (its ``simple_evaluate`` defaults unless a config says otherwise)."""

    num_fewshot: Optional[int] = None
    """Few-shot examples (None = the task's own default, 0 if it has none)."""
    apply_chat_template: bool = False
    """Wrap each request in the model's chat template."""
    fewshot_as_multiturn: bool = True
    """With the chat template: each few-shot example its own user/assistant turn (lm-eval 0.4.13's default)."""
    system_instruction: Optional[str] = None
    """System prompt put before the request."""
    fewshot_seed: int = 1234
    """Seed of the few-shot sampler (``fewshot_random_seed``)."""

    def scoring_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``lm_eval.simple_evaluate`` that fix the rendering."""
        return {
            "num_fewshot": self.num_fewshot, "apply_chat_template": self.apply_chat_template,
            "fewshot_as_multiturn": self.fewshot_as_multiturn, "system_instruction": self.system_instruction,
            "fewshot_random_seed": self.fewshot_seed,
        }

    def key(self) -> dict[str, Any]:
        """The settings a cached stage depends on, beyond the historical ones (empty at the defaults)."""
        out: dict[str, Any] = {}
        if self.apply_chat_template and not self.fewshot_as_multiturn:
            out["fewshot_as_multiturn"] = False
        if self.system_instruction is not None:
            out["system_instruction"] = self.system_instruction
        return out


def format_of(bench: Any, seed: int = 1234) -> PromptFormat:
    """The :class:`PromptFormat` of a ``BenchmarksConfig`` (``seed``: the few-shot seed the runner passes)."""
    return PromptFormat(
        num_fewshot=bench.num_fewshot, apply_chat_template=bool(bench.apply_chat_template),
        fewshot_as_multiturn=bool(getattr(bench, "fewshot_as_multiturn", True)),
        system_instruction=getattr(bench, "system_instruction", None), fewshot_seed=seed,
    )


def chat_template_fn(tokenizer: Any) -> Callable[..., str]:
    """The chat-template callable lm-eval's ``hf`` model hands to ``fewshot_context`` (``HFLM.apply_chat_template``)."""
    if tokenizer is None:
        raise UserError("rendering with apply_chat_template needs the model's tokenizer")

    def apply(history: list[dict], add_generation_prompt: bool = True) -> str:
        kwargs = dict(tokenize=False, add_generation_prompt=add_generation_prompt,
                      continue_final_message=not add_generation_prompt)
        try:
            return tokenizer.apply_chat_template(history, **kwargs)
        except Exception as exc:  # jinja2 TemplateError: lm-eval retries without the system turn
            if type(exc).__name__ != "TemplateError":
                raise
            return tokenizer.apply_chat_template([m for m in history if m["role"] != "system"], **kwargs)

    return apply


def strip_bos(text: str, tokenizer: Any) -> str:
    """``text`` without a leading BOS string: capture puts the tokenizer's prefix (BOS) before every document itself, so
    a chat template's rendered BOS would be doubled."""
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if isinstance(bos, str) and bos and text.startswith(bos) else text


def prepare_task(task: Any, fmt: PromptFormat) -> None:
    """Set the task's few-shot count and sampler seed as ``simple_evaluate`` does before building requests."""
    if fmt.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=fmt.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=fmt.fewshot_seed)


def render_docs(task: Any, docs: Iterable[Any], fmt: PromptFormat, *, tokenizer: Any = None) -> Iterator[str]:
    """Each document as ``Task.build_all_requests`` renders it (its ``fewshot_context`` call, argument for argument)."""
    chat = chat_template_fn(tokenizer) if fmt.apply_chat_template else None
    n_shot = task.config.num_fewshot or 0
    for doc in docs:
        yield task.fewshot_context(
            doc, num_fewshot=n_shot, system_instruction=fmt.system_instruction,
            apply_chat_template=fmt.apply_chat_template, fewshot_as_multiturn=fmt.fewshot_as_multiturn,
            chat_template=chat, gen_prefix=task.doc_to_prefix(doc),
        )


def render_items(task: Any, fmt: PromptFormat, *, tokenizer: Any = None,
                 limit: Optional[int] = None) -> Iterator[tuple[int, Any, str]]:
    """``(doc_id, doc, text)`` for the task's evaluation documents, as ``Task.build_all_requests`` renders them.

    Call :func:`prepare_task` first. The few-shot sampler draws in document order, so the items must be rendered in
    this order (as here) for the n-th item's examples to match the scored ones.
    """
    from lm_eval.evaluator_utils import get_sample_size  # noqa: PLC0415 - heavy; the caller has lm-eval loaded

    pairs = list(task.doc_iterator(rank=0, limit=get_sample_size(task, limit), world_size=1))
    for (doc_id, doc), text in zip(pairs, render_docs(task, (d for _, d in pairs), fmt, tokenizer=tokenizer)):
        yield int(doc_id), doc, text
