"""The documents lm_diff's own task YAML scores, read without lm-eval (what ``lm-diff plan`` sizes the benchmarks by).

``lm-diff plan`` works from the config alone, in well under a second, so it cannot build lm-eval's task index (seconds,
and ten more with lm-eval's ~14,700 built-in tasks). lm_diff's task YAML is simple enough to follow directly:

- a file with a ``group`` key is a group; its ``task`` list names children (groups or tasks), followed recursively,
  so ``diff_gemma`` reaches ``diff_probes`` and every ``diff_probe_<category>``;
- a file with a ``task`` key is a leaf task, merged over the file its ``include`` names (the templates);
- a leaf whose ``custom_dataset`` is ``load_split`` scores the rows of ``dataset_kwargs.data_file`` (one document per
  JSONL row, its text the row as written); one whose ``custom_dataset`` is ``load_probe`` scores the perplexity probe's
  documents (:func:`lm_diff.bench.probes.probe_rows`, its text the scored text);
- any other name (an upstream lm-eval task on a hub dataset, a task of an include path with its own loader) has no
  packaged documents and is skipped.

Directories: lm_diff's task folder (:func:`lm_diff.bench.paths.tasks_dir`) and then the config's include paths, a
later definition of a name replacing an earlier one, as lm-eval's index does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import yaml

from lm_diff.bench.paths import resolve_data_file, tasks_dir
from lm_diff.bench.probes import probe_rows
from lm_diff.errors import UserError

__all__ = ["TaskDocuments", "task_yaml_index", "packaged_documents", "chat_marker", "chat_rendered_tasks"]

LOADERS = {"load_split": "rows", "load_probe": "probe"}
"""``custom_dataset`` functions of lm_diff's YAML (``lm_diff.bench.suites.<name>``) → how their documents are read."""


@dataclass(frozen=True)
class TaskDocuments:
    """The documents one leaf task scores, as ``lm-diff plan`` counts them."""

    task: str
    """The leaf task's name."""
    output_type: str
    """lm-eval's ``output_type`` (``multiple_choice``, ``generate_until``, ``loglikelihood_rolling``, ...)."""
    texts: tuple[str, ...]
    """One string per document, in lm-eval's order: the JSONL row of a ``load_split`` task, the scored text of a
    perplexity probe."""


class _Loader(yaml.SafeLoader):
    """A safe loader that reads ``!function module.name`` as the string ``module.name`` (lm-eval resolves it; here only
    the name matters)."""


_Loader.add_constructor("!function", lambda loader, node: str(loader.construct_scalar(node)))


def _read(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid task YAML ({exc}); fix the file or remove it from the include path") from None
    return data if isinstance(data, dict) else {}


def _merged(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML of ``path`` over the file its ``include`` names (relative to ``path``'s folder), recursively."""
    if path in seen:
        raise UserError(f"{path}: its include chain loops back to itself; fix the include key")
    cfg = _read(path)
    inc = cfg.pop("include", None)
    if isinstance(inc, str):
        base = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not base.is_file():
            raise UserError(f"{path}: include {inc!r} not found next to it; fix the include key")
        cfg = {**_merged(base, (*seen, path)), **cfg}
    return cfg


def task_yaml_index(extra: Optional[Iterable[str | os.PathLike]] = None) -> dict[str, tuple[str, dict]]:
    """``{name: (kind, config)}`` over lm_diff's task folder and ``extra`` folders (later ones win): kind ``group``
    (config as written) or ``task`` (config merged over its ``include``). Files not ending in ``.yaml`` (the
    templates) are only read through an ``include``."""
    index: dict[str, tuple[str, dict]] = {}
    for folder in [tasks_dir(), *(Path(p).expanduser() for p in extra or ())]:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).rglob("*.yaml")):
            head = _read(path)
            if isinstance(head.get("group"), str):
                index[head["group"]] = ("group", head)
            elif isinstance(head.get("task"), str):
                index[head["task"]] = ("task", _merged(path))
    return index


def _children(cfg: dict) -> list[str]:
    items = cfg.get("task") or []
    items = [items] if isinstance(items, str) else items
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("group") or item.get("task"), str):
            out.append(item.get("group") or item["task"])
    return out


def _texts(cfg: dict) -> Optional[tuple[str, ...]]:
    fn = str(cfg.get("custom_dataset") or "").rsplit(".", 1)[-1]
    kwargs = cfg.get("dataset_kwargs") or {}
    if LOADERS.get(fn) == "rows" and isinstance(kwargs.get("data_file"), str):
        text = resolve_data_file(kwargs["data_file"]).read_text(encoding="utf-8")
        return tuple(line for line in text.splitlines() if line.strip())
    if LOADERS.get(fn) == "probe" and isinstance(kwargs.get("probe"), str):
        return tuple(r["text"] for r in probe_rows(kwargs["probe"], kwargs.get("source", "builtin")))
    return None


def packaged_documents(task_names: Iterable[str], extra: Optional[Iterable[str | os.PathLike]] = None,
                       index: Optional[dict[str, tuple[str, dict]]] = None) -> list[TaskDocuments]:
    """The packaged documents of every leaf task ``task_names`` reach (groups followed recursively, each leaf once, in
    order); names without packaged data (upstream tasks) contribute nothing. ``index``: a prebuilt
    :func:`task_yaml_index` (default: built over lm_diff's tasks and ``extra``)."""
    idx = index if index is not None else task_yaml_index(extra)
    out: list[TaskDocuments] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in idx:
            return
        seen.add(name)
        kind, cfg = idx[name]
        if kind == "group":
            for child in _children(cfg):
                visit(child)
            return
        texts = _texts(cfg)
        if texts is not None:
            out.append(TaskDocuments(name, str(cfg.get("output_type") or "multiple_choice"), texts))

    for n in task_names:
        visit(str(n))
    return out



def chat_marker(tokenizer) -> Optional[str]:
    """The line the tokenizer's chat template writes just before a user message's content (``<|im_start|>user``,
    ``<start_of_turn>user``), or None without a template or when it writes nothing there. A template's default system
    prompt comes before that line and is left out."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = "lm_diff_probe_content"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render one user turn marks nothing
        return None
    if not isinstance(text, str) or probe not in text:
        return None
    head = text.split(probe, 1)[0].strip()
    line = head.splitlines()[-1].strip() if head else ""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and line.startswith(bos):
        line = line[len(bos):].strip()
    return line or None


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def chat_rendered_tasks(task_names: Iterable[str], marker: Optional[str],
                        extra: Optional[Iterable[str | os.PathLike]] = None, rows: int = 50) -> list[str]:
    """Leaf tasks ``task_names`` reach whose packaged items already carry the chat template: ``marker``
    (:func:`chat_marker`) in a field of one of their first ``rows`` rows. lm-eval's ``apply_chat_template`` would wrap
    such a prompt in a second template (``<|im_start|>user <|im_start|>user ...``), so both models are scored on prompts
    neither was made for. Perplexity probes (scored text, no prompt) and tasks without packaged data are not checked."""
    if not marker:
        return []
    out = []
    for t in packaged_documents(task_names, extra):
        if t.output_type == "loglikelihood_rolling":
            continue
        for text in t.texts[:rows]:
            try:
                fields = list(_strings(json.loads(text)))
            except ValueError:
                fields = [text]
            if any(marker in f for f in fields):
                out.append(t.task)
                break
    return out
