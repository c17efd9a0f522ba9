"""A tiny deterministic OpenAI-compatible chat-completions server for tests (127.0.0.1 only, random free port).

Answers are derived from the prompts ``lm_diff.categorize.annotate`` builds:

- **explain** (system prompt lists ``Categories:``): the explanation names the most frequent ``<<marked>>`` token,
  ``Activates on the word "X".``; the category is the listed category whose keywords (``KEYWORDS``) occur most often in
  the examples, or ``none``.
- **detect** (``Explanation:`` + numbered examples): 1 for each example containing the quoted word, else 0.

The ``model`` field of the request picks a behaviour: ``fake`` (valid JSON), ``fake-fenced`` (JSON inside prose and a
code fence), ``fake-bad-once`` (first answer malformed, the corrective retry valid), ``fake-bad`` (always malformed),
``fake-badcat`` (a category outside the taxonomy), ``fake-slow`` (sleeps ``slow_s`` before answering).

The server is bounded: it stops itself after ``lifetime_s`` seconds or ``max_requests`` requests (then answers 503),
and stops on leaving the ``with`` block.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

KEYWORDS = {
    "code": ["def ", "return", "import ", "print("],
    "math": [" plus ", " times ", "=", "sum"],
    "safety": ["weapon", "harm", "refuse"],
    "multilingual": [" le ", " la ", " der ", " und "],
}


def _explain(messages: list[dict[str, str]]) -> tuple[str, str]:
    system = messages[0]["content"]
    user = messages[1]["content"]
    listed = re.findall(r"^- ([a-z][a-z0-9_]*):", system, re.M)
    marked = [m.strip().lower() for m in re.findall(r"<<(.+?)>>", user)]
    word = collections.Counter(marked).most_common(1)[0][0] if marked else "nothing"
    plain = user.replace("<<", "").replace(">>", "").lower()
    scores = {c: sum(plain.count(k) for k in KEYWORDS.get(c, [])) for c in listed if c != "none"}
    best = max(scores.items(), key=lambda kv: (kv[1], kv[0]), default=("none", 0))
    category = best[0] if best[1] > 0 else "none"
    return f'Activates on the word "{word}".', category


def _detect(messages: list[dict[str, str]]) -> list[int]:
    user = messages[1]["content"]
    m = re.search(r'Explanation: .*?"(.+?)"', user)
    word = m.group(1).lower() if m else "\x00"
    examples = re.findall(r"^Example \d+: (.*)$", user, re.M)
    return [1 if word in ex.lower() else 0 for ex in examples]


class FakeLLMServer:
    """``with FakeLLMServer() as srv: srv.url`` → ``http://127.0.0.1:PORT/v1``; ``srv.requests`` lists request bodies."""

    def __init__(self, lifetime_s: float = 60.0, max_requests: int = 2000, slow_s: float = 1.0, api_key: Optional[str] = None):
        self.lifetime_s, self.max_requests, self.slow_s, self.api_key = lifetime_s, max_requests, slow_s, api_key
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def answer(self, body: dict[str, Any]) -> str:
        model = body.get("model", "fake")
        messages = body["messages"]
        is_retry = len(messages) > 2
        kind = "explain" if "Categories:" in messages[0]["content"] else "detect"
        if model == "fake-slow":
            time.sleep(self.slow_s)
        if model == "fake-bad" or (model == "fake-bad-once" and not is_retry):
            return "Sure! The feature seems to be about {something, maybe [code"
        if kind == "explain":
            expl, cat = _explain(messages)
            if model == "fake-badcat":
                cat = "cooking"
            text = json.dumps({"explanation": expl, "category": cat})
        else:
            text = json.dumps(_detect(messages))
        if model == "fake-fenced":
            text = f"Here is my answer:\n```json\n{text}\n```\nHope this helps."
        return text

    def __enter__(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    n = len(server.requests)
                if n > server.max_requests:
                    return self._send(503, {"error": {"message": "fake server request budget exhausted"}})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                text = server.answer(body)
                try:
                    self._send(200, {
                        "id": f"fake-{n}",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    })
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
