"""``hf-diff``: lm-eval's ``HFLM`` with capture-friendly defaults, registered in lm-eval's model registry on import.

lm-eval 0.4.13 has no model plugin discovery, so ``lm_eval --model hf-diff`` works only through ``lm-diff eval``
(which imports this module) or the Python API; the ``lm_eval.models`` entry point in pyproject.toml is for future
releases. Differences from ``hf``:

- ``logits_cache=False`` by default: every request runs its own forward pass, so a forward hook sees one activation
  row per request (HFLM otherwise reuses one forward for requests sharing a context, e.g. multiple-choice continuations).
- ``capture_model`` property: the bare transformers module (``HFLM.model``, accelerator-unwrapped) for hooks/nnsight.
"""

from __future__ import annotations

from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.huggingface import HFLM

MODEL_NAME = "hf-diff"


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


class DiffHFLM(HFLM):
    """``HFLM`` with ``logits_cache=False`` unless given (``--model_args`` strings such as ``"True"`` are accepted)."""

    def __init__(self, *args, logits_cache=False, **kwargs):
        super().__init__(*args, logits_cache=_as_bool(logits_cache), **kwargs)

    @property
    def capture_model(self):
        """The transformers model to hook (same object lm-eval calls)."""
        return self.model


def _register() -> None:
    current = model_registry._objs.get(MODEL_NAME) if hasattr(model_registry, "_objs") else None
    if isinstance(current, type) and current.__qualname__ == DiffHFLM.__qualname__ and current.__module__ == __name__:
        return  # already registered (module re-imported)
    register_model(MODEL_NAME)(DiffHFLM)


_register()
