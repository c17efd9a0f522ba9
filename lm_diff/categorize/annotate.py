"""LLM annotation of selected latents (methods §7.2, R9, B6): Delphi-style explain → detection scoring → F1 filter.

Off by default (``categories.method: grounded``). For each selected latent:

1. **Explain.** The explainer LLM sees the latent's top activating examples with activating tokens marked ``<<tok>>`` and
   their activations (scaled 0–10, as in Delphi), and answers JSON ``{"explanation": ..., "category": ...}`` with the
   category constrained to the taxonomy ∪ {``none``}. A malformed answer or an unknown category gets one corrective
   retry; after that the category is ``none`` (and a missing explanation stays empty).
2. **Detection scoring.** The scorer LLM sees the explanation and a shuffled, held-out mix of activating and non-activating
   examples (plain text, no markers) and answers which examples the explanation describes (JSON list of 0/1). Precision,
   recall, F1 and balanced accuracy are computed against the truth; the explanation is **kept** when F1 ≥
   ``AnnotatorConfig.f1_min`` (default 0.7).

Backends: any OpenAI-compatible ``/chat/completions`` endpoint (stdlib ``urllib``; API key read from the environment
variable named by ``api_key_env``, never stored), or a local Hugging Face causal LM (``transformers`` generate,
``trust_remote_code`` off). Responses are cached in a JSONL file keyed by the hash of (backend, model, messages,
sampling settings), rewritten atomically after every new response, so a rerun costs no LLM calls.

Examples mapping accepted by :func:`annotate_latents` (the Delphi-compatible export of ``lm_diff.diff.examples``)::

    examples[latent] = {                # key: the latent id as int (a str of the id is also accepted, e.g. from JSON)
        "activating": [                 # ideally sorted by max activation, descending; any order works
            {"text": str,               # the window's text
             "tokens": [str, ...],      # decoded token strings whose concatenation is the window text
             "acts": [float, ...]},     # this latent's activation per token (same length as tokens; > 0 = active)
            ...
        ],
        "non_activating": [             # windows on which the latent does not fire; "tokens"/"acts" optional here
            {"text": str, "tokens": [...], "acts": [...]},
            ...
        ],
    }

An activating example without ``tokens``/``acts`` is shown without markers. The activating examples are split
deterministically: ``test_examples`` of them, spread evenly over the activation ranks (quantile-like), are held out for
detection scoring; the explainer sees the strongest ``examples`` of the rest.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from lm_diff.errors import UserError
from lm_diff.plugins.hookspecs import hookimpl

NONE = "none"
COLUMNS = [
    "latent",
    "explanation",
    "category",
    "detection_f1",
    "detection_balanced_acc",
    "kept",
    "detection_precision",
    "detection_recall",
    "n_test",
]
_CFG_KEY = "categories.annotator"

EXPLAIN_SYSTEM = (
    "You are a meticulous interpretability researcher explaining a latent feature of a language model. "
    "You are shown text examples on which the feature activates. Tokens where it activates are marked <<like this>>, "
    "and each example lists the activating tokens with their activation strength on a 0-10 scale. "
    "Find what the marked tokens and their contexts have in common and write a concise explanation "
    "(one sentence, no more than 25 words; no need to mention the markers). "
    "Then pick the capability category that best fits the feature, or \"none\" if no category fits.\n\n"
    "Categories:\n{categories}\n\n"
    'Answer with JSON only, exactly in this form: {{"explanation": "<your explanation>", "category": "<category name or none>"}}'
)

DETECT_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher. You are given an explanation of a latent feature of a "
    "language model and a numbered list of text examples. For each example, decide whether the feature, as described "
    "by the explanation, is present in it (1) or not (0). Some examples contain the feature and some do not.\n\n"
    "Answer with JSON only: a list with exactly one 0 or 1 per example, in order, e.g. [1, 0, 0, 1]."
)


# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def cohen_kappa(labels_a: Sequence[Any], labels_b: Sequence[Any]) -> float:
    """Cohen's κ between two label sequences of equal length: (p_o − p_e) / (1 − p_e).

    p_o is the observed agreement and p_e the chance agreement from the two marginal distributions. Returns NaN for empty
    input and, when chance agreement is already 1 (both raters use one and the same label), 1.0. Local pure function:
    ``lm_diff.stats`` was not available when this module was written; the two must agree.
    """
    a, b = list(labels_a), list(labels_b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: label sequences differ in length ({len(a)} vs {len(b)})")
    n = len(a)
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in zip(a, b)) / n
    cats = set(a) | set(b)
    p_e = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else float("nan")
    return (p_o - p_e) / (1.0 - p_e)


def detection_metrics(truth: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """Precision, recall, F1 and balanced accuracy of 0/1 predictions (0 where undefined; balanced accuracy averages
    the rates that exist)."""
    tp = sum(1 for t, p in zip(truth, pred) if t and p)
    fp = sum(1 for t, p in zip(truth, pred) if not t and p)
    fn = sum(1 for t, p in zip(truth, pred) if t and not p)
    tn = sum(1 for t, p in zip(truth, pred) if not t and not p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rates = []
    if tp + fn:
        rates.append(recall)
    if tn + fp:
        rates.append(tn / (tn + fp))
    bal = sum(rates) / len(rates) if rates else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "balanced_acc": bal}


def compare_with_grounded(annotations, grounded, only_kept: bool = True) -> dict[str, Any]:
    """Cohen's κ between LLM categories and grounded categories on the latents both label (methods B6).

    ``annotations``: output of :func:`annotate_latents`. ``grounded``: ``categorize.grounded_assign`` output (latent,
    category, auroc, assigned; possibly several rows per latent): each latent's grounded label is its assigned category
    with the highest AUROC, or ``none``. With ``only_kept`` only explanations that passed the F1 filter count.
    Returns ``{"kappa", "n", "agreement"}``.
    """
    ann = annotations[annotations["kept"]] if only_kept else annotations
    g = grounded
    if "assigned" in g.columns:
        g = g[g["assigned"].astype(bool)]
    if "auroc" in g.columns:
        g = g.sort_values("auroc", ascending=False)
    glabel = g.drop_duplicates("latent").set_index("latent")["category"].to_dict()
    a_labels, g_labels = [], []
    for lat, cat in zip(ann["latent"], ann["category"]):
        a_labels.append(cat)
        g_labels.append(glabel.get(lat, NONE))
    n = len(a_labels)
    agree = sum(x == y for x, y in zip(a_labels, g_labels)) / n if n else float("nan")
    return {"kappa": cohen_kappa(a_labels, g_labels), "n": n, "agreement": agree}


# ----------------------------------------------------------------------------------------------------------------------
# Prompts


def _scaled(acts: Sequence[float], max_act: float) -> list[int]:
    if max_act <= 0:
        return [0 for _ in acts]
    return [int(round(10 * max(a, 0.0) / max_act)) for a in acts]


def format_activating(example: Mapping[str, Any], max_act: Optional[float] = None) -> str:
    """The example text with runs of activating tokens (act > 0) wrapped in ``<<…>>`` (leading whitespace kept outside),
    followed by the list of activating tokens with activations scaled 0–10 relative to ``max_act``."""
    tokens, acts = example.get("tokens"), example.get("acts")
    if not tokens or not acts or len(tokens) != len(acts):
        return str(example.get("text", ""))
    acts = [float(a) for a in acts]
    max_act = max_act if max_act and max_act > 0 else max(max(acts), 0.0)
    out: list[str] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            joined = "".join(run)
            stripped = joined.lstrip()
            out.append(joined[: len(joined) - len(stripped)] + "<<" + stripped + ">>")
            run.clear()

    for tok, a in zip(tokens, acts):
        if a > 0:
            run.append(str(tok))
        else:
            close_run()
            out.append(str(tok))
    close_run()
    scaled = _scaled(acts, max_act)
    listed = ", ".join(f'("{str(t).strip()}", {s})' for t, a, s in zip(tokens, acts, scaled) if a > 0)
    return "".join(out) + ("\nActivations: " + listed if listed else "")


def _max_act(example: Mapping[str, Any]) -> float:
    acts = example.get("acts") or []
    return max((float(a) for a in acts), default=0.0)


def explain_messages(train: Sequence[Mapping[str, Any]], taxonomy: Sequence[Any]) -> list[dict[str, str]]:
    """Chat messages asking for a concise explanation and a category ∈ taxonomy ∪ {none}."""
    cats = "\n".join(f"- {c.name}: {c.description}" for c in taxonomy) + f"\n- {NONE}: none of the above fits"
    max_act = max((_max_act(e) for e in train), default=0.0)
    body = "\n\n".join(f"Example {i + 1}: {format_activating(e, max_act)}" for i, e in enumerate(train))
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM.format(categories=cats)},
        {"role": "user", "content": body},
    ]


def detect_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking which of the numbered plain-text examples match the explanation."""
    body = f"Explanation: {explanation}\n\n" + "\n\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))
    body += f"\n\nAnswer with a JSON list of exactly {len(texts)} values (0 or 1)."
    return [{"role": "system", "content": DETECT_SYSTEM}, {"role": "user", "content": body}]


# ----------------------------------------------------------------------------------------------------------------------
# Parsing


def _json_candidates(text: str, open_ch: str, close_ch: str) -> list[str]:
    """Substrings from each ``open_ch`` to each later ``close_ch`` (longest first), after stripping code fences."""
    text = re.sub(r"```(?:json)?", "", text or "")
    starts = [i for i, ch in enumerate(text) if ch == open_ch]
    ends = [i for i, ch in enumerate(text) if ch == close_ch]
    out = []
    for s in starts:
        for e in reversed(ends):
            if e > s:
                out.append(text[s : e + 1])
    return out[:50]


def normalise_category(raw: Any, names: Sequence[str]) -> Optional[str]:
    """Map an answered category to a taxonomy name or ``none`` (case, spaces and hyphens forgiven); None if invalid."""
    if not isinstance(raw, str):
        return None
    key = re.sub(r"[\s\-]+", "_", raw.strip().strip("\"'`.").lower())
    if key in {NONE, "null", "n/a", "na", "other", "unknown"}:
        return NONE
    return key if key in names else None


def parse_explanation(text: str, names: Sequence[str]) -> tuple[Optional[str], Optional[str], str]:
    """Parse an explainer answer into ``(explanation, category, problem)``.

    ``explanation`` is None when none could be read; ``category`` is None when missing or not in ``names`` ∪ {none};
    ``problem`` is an empty string for a valid answer, else a short description used in the corrective retry.
    """
    obj = None
    for cand in _json_candidates(text, "{", "}"):
        try:
            val = json.loads(cand)
        except (ValueError, RecursionError):
            continue
        if isinstance(val, dict):
            obj = val
            break
    if obj is None:
        # Tolerate near-JSON: "explanation": "...", "category": "..." with broken surrounding syntax.
        m_e = re.search(r'"?explanation"?\s*[:=]\s*"([^"]*)"', text or "", re.I)
        m_c = re.search(r'"?category"?\s*[:=]\s*"?([A-Za-z_\- ]+)"?', text or "", re.I)
        if not m_e:
            return None, None, "the answer was not a JSON object"
        obj = {"explanation": m_e.group(1), "category": m_c.group(1) if m_c else None}
    lower = {str(k).lower(): v for k, v in obj.items()}
    expl = lower.get("explanation")
    expl = " ".join(expl.split()) if isinstance(expl, str) and expl.strip() else None
    cat = normalise_category(lower.get("category"), names)
    if expl is None:
        return None, cat, 'the JSON object has no non-empty "explanation"'
    if cat is None:
        return expl, None, f'"category" must be one of: {", ".join(list(names) + [NONE])}; got {lower.get("category")!r}'
    return expl, cat, ""


def parse_detection(text: str, n: int) -> Optional[list[int]]:
    """Parse a scorer answer into ``n`` 0/1 labels: a JSON list of 0/1/true/false (possibly inside an object), else None."""
    for cand in _json_candidates(text, "[", "]"):
        try:
            val = json.loads(cand)
        except (ValueError, RecursionError):
            continue
        if isinstance(val, list) and len(val) == n:
            out = []
            for v in val:
                if isinstance(v, bool):
                    out.append(int(v))
                elif isinstance(v, (int, float)) and v in (0, 1):
                    out.append(int(v))
                elif isinstance(v, str) and v.strip().lower() in ("0", "1", "yes", "no", "true", "false"):
                    out.append(1 if v.strip().lower() in ("1", "yes", "true") else 0)
                else:
                    out = None
                    break
            if out is not None:
                return out
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Backends


class ResponseCache:
    """JSONL cache ``{"key", "response", "kind"}`` per line, keyed by a prompt hash; rewritten atomically on each put."""

    def __init__(self, path: Optional[str | os.PathLike]):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a damaged line costs one repeated call, never a crash
                if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("response"), str):
                    self.entries[row["key"]] = row

    @staticmethod
    def key(payload: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> Optional[str]:
        row = self.entries.get(key)
        return row["response"] if row else None

    def put(self, key: str, response: str, kind: str = "") -> None:
        self.entries[key] = {"key": key, "kind": kind, "response": response}
        if self.path is None:
            return
        from lm_diff.io import write_text

        write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.entries.values()))


def chat_url(endpoint: str) -> str:
    """``{endpoint}/chat/completions`` unless the endpoint already names it."""
    e = endpoint.rstrip("/")
    return e if e.endswith("/chat/completions") else e + "/chat/completions"


class OpenAIChat:
    """Minimal OpenAI-compatible chat-completions client (stdlib only)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.url = chat_url(cfg.endpoint)
        self.name = f"openai:{cfg.model}"

    def __call__(self, messages: list[dict[str, str]]) -> str:
        cfg = self.cfg
        body = json.dumps(
            {
                "model": cfg.model,
                "messages": messages,
                "temperature": cfg.temperature,
                "max_tokens": cfg.max_new_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(3):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
                    raw = resp.read()
                return _message_text(raw, self.url)
            except urllib.error.HTTPError as exc:
                detail = _read_error(exc)
                if exc.code in (401, 403):
                    raise UserError(
                        f"LLM annotator endpoint {self.url} refused the request (HTTP {exc.code}: {detail}); "
                        f"put a valid API key in the environment variable {cfg.api_key_env} "
                        f"(named by {_CFG_KEY}.api_key_env)"
                    ) from None
                if exc.code == 404:
                    raise UserError(
                        f"LLM annotator endpoint {self.url} answered 404 ({detail}); check {_CFG_KEY}.endpoint "
                        f"(the base URL, e.g. http://localhost:8000/v1) and {_CFG_KEY}.model ({cfg.model!r})"
                    ) from None
                if exc.code in (429, 500, 502, 503, 504) and attempt < 2:
                    last = f"HTTP {exc.code}: {detail}"
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise UserError(
                    f"LLM annotator endpoint {self.url} failed (HTTP {exc.code}: {detail}); check the server and "
                    f"{_CFG_KEY}.model ({cfg.model!r})"
                ) from None
            except (TimeoutError, socket.timeout):
                raise UserError(
                    f"LLM annotator endpoint {self.url} did not answer within {cfg.timeout:g} s; "
                    f"raise {_CFG_KEY}.timeout or check the server"
                ) from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    raise UserError(
                        f"LLM annotator endpoint {self.url} did not answer within {cfg.timeout:g} s; "
                        f"raise {_CFG_KEY}.timeout or check the server"
                    ) from None
                raise UserError(
                    f"cannot reach the LLM annotator endpoint {self.url} ({exc.reason}); start the server or fix "
                    f"{_CFG_KEY}.endpoint in the config"
                ) from None
            except (ConnectionError, http.client.HTTPException) as exc:
                raise UserError(
                    f"cannot reach the LLM annotator endpoint {self.url} ({exc}); start the server or fix "
                    f"{_CFG_KEY}.endpoint in the config"
                ) from None
        raise UserError(f"LLM annotator endpoint {self.url} kept failing ({last}); check the server")


def _read_error(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", "replace")[:200].strip() or exc.reason
    except Exception:  # noqa: BLE001 - best effort detail for an error message
        return str(exc.reason)


def _message_text(raw: bytes, url: str) -> str:
    try:
        content = json.loads(raw.decode("utf-8"))["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(
            f"LLM annotator endpoint {url} did not return an OpenAI chat-completions response "
            f"(no choices[0].message.content); check {_CFG_KEY}.endpoint"
        ) from None
    return content if isinstance(content, str) else ""


class HFChat:
    """Local Hugging Face causal LM (``trust_remote_code`` off), greedy unless ``temperature`` > 0."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.name = f"hf:{cfg.model}"
        self._model = None
        self._tok = None

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(self.cfg.model, trust_remote_code=False)
            self._model = AutoModelForCausalLM.from_pretrained(self.cfg.model, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load the local annotator model {self.cfg.model!r} ({str(exc).splitlines()[0]}); set "
                f"{_CFG_KEY}.model to a local model directory, or {_CFG_KEY}.endpoint to an OpenAI-compatible server"
            ) from None
        self._model.to(self.cfg.device).eval()

    def __call__(self, messages: list[dict[str, str]]) -> str:
        import torch

        if self._model is None:
            self._load()
        tok, model = self._tok, self._model
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages) + "\n\nASSISTANT:"
        enc = tok(prompt, return_tensors="pt").to(self.cfg.device)
        kwargs: dict[str, Any] = {"max_new_tokens": self.cfg.max_new_tokens}
        if self.cfg.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.cfg.temperature)
        else:
            kwargs.update(do_sample=False)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is not None:
            kwargs["pad_token_id"] = pad
        torch.manual_seed(self.cfg.seed)
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def make_backend(cfg: Any) -> Callable[[list[dict[str, str]]], str]:
    """The chat backend named by the config: an endpoint if set, else a local HF model."""
    if cfg.endpoint:
        if not cfg.model:
            raise UserError(f"{_CFG_KEY}.endpoint is set but {_CFG_KEY}.model is not; name the model served there")
        return OpenAIChat(cfg)
    if cfg.model:
        return HFChat(cfg)
    raise UserError(
        f"the LLM annotator has no model: set {_CFG_KEY}.endpoint and {_CFG_KEY}.model (OpenAI-compatible server) "
        f"or {_CFG_KEY}.model alone (a local HF model directory)"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Annotation


def _examples_for(examples: Mapping[Any, Any], latent: Any) -> dict[str, list]:
    ex = examples.get(latent)
    if ex is None:
        ex = examples.get(str(latent))
    if ex is None and isinstance(latent, str) and latent.lstrip("-").isdigit():
        ex = examples.get(int(latent))
    ex = ex or {}
    return {"activating": list(ex.get("activating") or []), "non_activating": list(ex.get("non_activating") or [])}


def split_examples(ex: Mapping[str, list], n_explain: int, n_test: int, n_non: int) -> tuple[list, list, list]:
    """``(explain, test_activating, test_non_activating)``: held-out activating examples spread evenly over the
    activation ranks (at most half of them), the strongest ``n_explain`` of the rest for the explainer."""
    act = sorted(ex["activating"], key=_max_act, reverse=True)
    n = len(act)
    k = min(n_test, n // 2)
    test_idx = {int((i + 0.5) * n / k) for i in range(k)} if k else set()  # centre of each of k equal rank bins
    test = [act[i] for i in sorted(test_idx)]
    rest = [e for i, e in enumerate(act) if i not in test_idx]
    return rest[:n_explain], test, list(ex["non_activating"])[:n_non]


def _annotator_config(config: Any) -> Any:
    """Accept an AnnotatorConfig, a CategoriesConfig or a RunConfig."""
    if hasattr(config, "categories"):
        config = config.categories
    if hasattr(config, "annotator"):
        config = config.annotator
    return config


def annotate_latents(
    latents,
    examples: Mapping[Any, Mapping[str, list]],
    taxonomy: Sequence[Any],
    config: Any,
    *,
    backend: Optional[Callable[[list[dict[str, str]]], str]] = None,
    cache_path: Optional[str | os.PathLike] = None,
    progress: bool = True,
):
    """Explain, categorise and detection-score each selected latent; return one row per annotated latent.

    ``latents``: DataFrame with a ``latent`` column (rows in priority order; at most ``max_latents`` are annotated).
    ``examples``: the mapping documented in the module docstring. ``taxonomy``: ``Category`` objects (``name``,
    ``description``). ``config``: ``AnnotatorConfig`` (a ``CategoriesConfig`` or ``RunConfig`` also works).
    ``backend``: optional callable ``messages -> text`` replacing the configured endpoint/HF model.
    ``cache_path``: JSONL response cache (default ``config.cache``; None = no cache).

    Returns a DataFrame with columns ``latent, explanation, category, detection_f1, detection_balanced_acc, kept``
    plus ``detection_precision, detection_recall, n_test``. Latents without activating examples get an empty
    explanation, category ``none``, NaN scores and ``kept = False``; so do explanations whose detection answer could not
    be parsed after one retry.
    """
    import pandas as pd

    cfg = _annotator_config(config)
    if "latent" not in getattr(latents, "columns", []):
        raise UserError("annotate_latents: the latents table needs a 'latent' column")
    names = [c.name for c in taxonomy]
    ids = list(latents["latent"])[: cfg.max_latents]
    chat = backend if backend is not None else make_backend(cfg)
    backend_name = getattr(chat, "name", getattr(chat, "__name__", "custom"))
    cache = ResponseCache(cache_path if cache_path is not None else cfg.cache)
    params = {"backend": backend_name, "model": cfg.model, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}
    stats = {"calls": 0, "cached": 0}

    def ask(messages: list[dict[str, str]], kind: str) -> str:
        key = ResponseCache.key({**params, "messages": messages})
        hit = cache.get(key)
        if hit is not None:
            stats["cached"] += 1
            return hit
        text = chat(messages)
        stats["calls"] += 1
        cache.put(key, text, kind)
        return text

    rows = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("annotating latents", total=len(ids))
        for lat in ids:
            rows.append(_annotate_one(lat, _examples_for(examples, lat), taxonomy, names, cfg, ask))
            bar.advance(task)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(
            f"annotated {len(df)} latents with {backend_name}: {int(df['kept'].sum())} kept (detection F1 >= "
            f"{cfg.f1_min:g}); {stats['calls']} LLM calls, {stats['cached']} cached"
            + (f"; cache {cache.path}" if cache.path else "")
        )
    return df


def _annotate_one(lat, ex, taxonomy, names, cfg, ask) -> dict[str, Any]:
    row: dict[str, Any] = {
        "latent": lat,
        "explanation": "",
        "category": NONE,
        "detection_f1": float("nan"),
        "detection_balanced_acc": float("nan"),
        "kept": False,
        "detection_precision": float("nan"),
        "detection_recall": float("nan"),
        "n_test": 0,
    }
    train, test_act, test_non = split_examples(ex, cfg.examples, cfg.test_examples, cfg.non_activating)
    if not train:
        return row
    # 1. explain (+ category), one corrective retry
    messages = explain_messages(train, taxonomy)
    answer = ask(messages, "explain")
    expl, cat, problem = parse_explanation(answer, names)
    if problem:
        retry = messages + [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer is invalid: {problem}. Reply again with JSON only: "
             '{"explanation": "...", "category": "..."}'},
        ]
        expl2, cat2, _ = parse_explanation(ask(retry, "explain-retry"), names)
        expl = expl2 or expl
        cat = cat2 if cat2 is not None else cat  # still invalid after one retry: category none
    row["explanation"] = expl or ""
    row["category"] = cat or NONE
    if not expl or not test_act:
        return row
    # 2. detection scoring on a shuffled held-out mix
    items = [(str(e.get("text", "")), 1) for e in test_act] + [(str(e.get("text", "")), 0) for e in test_non]
    rng = random.Random(f"{cfg.seed}:{lat}")
    rng.shuffle(items)
    texts, truth = [t for t, _ in items], [y for _, y in items]
    messages = detect_messages(expl, texts)
    answer = ask(messages, "detect")
    pred = parse_detection(answer, len(texts))
    if pred is None:
        retry = messages + [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer is invalid. Reply with JSON only: a list of exactly {len(texts)} "
             "values, each 0 or 1."},
        ]
        pred = parse_detection(ask(retry, "detect-retry"), len(texts))
    row["n_test"] = len(texts)
    if pred is None:
        return row
    m = detection_metrics(truth, pred)
    row.update(
        detection_f1=m["f1"],
        detection_balanced_acc=m["balanced_acc"],
        detection_precision=m["precision"],
        detection_recall=m["recall"],
        kept=bool(m["f1"] >= cfg.f1_min and not math.isnan(m["f1"])),
    )
    return row


@hookimpl
def lm_diff_annotators():
    """The LLM annotator (off unless ``categories.method`` is ``llm`` or ``both``)."""
    return {"llm": annotate_latents}
