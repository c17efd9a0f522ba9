"""Chat backends of the LLM annotator and its response cache (used by :mod:`lm_diff.categorize.annotate`).

- :class:`OpenAIChat`: any OpenAI-compatible ``/chat/completions`` endpoint over stdlib ``urllib``; the API key is read
  from the environment variable named by ``api_key_env`` and never stored. Transient HTTP errors (429, 5xx) are retried
  twice with backoff; every other failure is one :class:`~lm_diff.errors.UserError` naming the config key to fix.
- :class:`HFChat`: a local Hugging Face causal LM (``transformers`` generate, ``trust_remote_code`` off).
- :class:`ResponseCache`: JSONL keyed by the hash of (backend, model, messages, sampling settings), rewritten atomically
  after every new response, so a rerun costs no LLM calls.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from lm_diff.errors import UserError
from lm_diff.io import write_text

CFG_KEY = "categories.annotator"
"""Config section named in every error message."""

__all__ = ["CFG_KEY", "ResponseCache", "OpenAIChat", "HFChat", "chat_url", "make_backend"]


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
                        f"(named by {CFG_KEY}.api_key_env)"
                    ) from None
                if exc.code == 404:
                    raise UserError(
                        f"LLM annotator endpoint {self.url} answered 404 ({detail}); check {CFG_KEY}.endpoint "
                        f"(the base URL, e.g. http://localhost:8000/v1) and {CFG_KEY}.model ({cfg.model!r})"
                    ) from None
                if exc.code in (429, 500, 502, 503, 504) and attempt < 2:
                    last = f"HTTP {exc.code}: {detail}"
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise UserError(
                    f"LLM annotator endpoint {self.url} failed (HTTP {exc.code}: {detail}); check the server and "
                    f"{CFG_KEY}.model ({cfg.model!r})"
                ) from None
            except (TimeoutError, socket.timeout):
                raise UserError(
                    f"LLM annotator endpoint {self.url} did not answer within {cfg.timeout:g} s; "
                    f"raise {CFG_KEY}.timeout or check the server"
                ) from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    raise UserError(
                        f"LLM annotator endpoint {self.url} did not answer within {cfg.timeout:g} s; "
                        f"raise {CFG_KEY}.timeout or check the server"
                    ) from None
                raise UserError(
                    f"cannot reach the LLM annotator endpoint {self.url} ({exc.reason}); start the server or fix "
                    f"{CFG_KEY}.endpoint in the config"
                ) from None
            except (ConnectionError, http.client.HTTPException) as exc:
                raise UserError(
                    f"cannot reach the LLM annotator endpoint {self.url} ({exc}); start the server or fix "
                    f"{CFG_KEY}.endpoint in the config"
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
            f"(no choices[0].message.content); check {CFG_KEY}.endpoint"
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
        from transformers import (  # noqa: PLC0415 - heavy; only a local HF annotator needs it
            AutoModelForCausalLM,
            AutoTokenizer,
        )

        try:
            self._tok = AutoTokenizer.from_pretrained(self.cfg.model, trust_remote_code=False)
            self._model = AutoModelForCausalLM.from_pretrained(self.cfg.model, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load the local annotator model {self.cfg.model!r} ({str(exc).splitlines()[0]}); set "
                f"{CFG_KEY}.model to a local model directory, or {CFG_KEY}.endpoint to an OpenAI-compatible server"
            ) from None
        self._model.to(self.cfg.device).eval()

    def __call__(self, messages: list[dict[str, str]]) -> str:
        import torch  # noqa: PLC0415 - heavy; only a local HF annotator needs it

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
            raise UserError(f"{CFG_KEY}.endpoint is set but {CFG_KEY}.model is not; name the model served there")
        return OpenAIChat(cfg)
    if cfg.model:
        return HFChat(cfg)
    raise UserError(
        f"the LLM annotator has no model: set {CFG_KEY}.endpoint and {CFG_KEY}.model (OpenAI-compatible server) "
        f"or {CFG_KEY}.model alone (a local HF model directory)"
    )
