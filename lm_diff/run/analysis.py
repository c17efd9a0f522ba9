"""Per-crosscoder stages of ``lm-diff run``: ``diff`` (the latent table with plugin metrics, and latent scaling) and
``grounding`` (grounded category assignment), each one cached stage per trained crosscoder.

Sets (docs/architecture.md): direct design: S = B-specific latents of the (A, B) crosscoder, T = its A-specific latents.
Anchored design: S = B-specific latents of (P, B), T = A-specific latents of (P, A) ("fine-tune-specific vs pretrained"
in each crosscoder), as in the seed paper.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lm_diff.capture.store import ActivationStore
from lm_diff.categorize.grounding import grounded_assign, latent_labels, store_prompt_max_acts
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import RunConfig
from lm_diff.crosscoder.model import CrossCoder
from lm_diff.diff.scaling import latent_scaling
from lm_diff.diff.table import latent_table
from lm_diff.errors import UserError
from lm_diff.io import read_jsonl
from lm_diff.plugins.manager import hook
from lm_diff.run.stages import Stages
from lm_diff.schema import read_table, write_table

NEUTRAL = "neutral"


@dataclasses.dataclass
class CrosscoderDiff:
    """One trained crosscoder and its finished diff and grounding stages (loaded on first use)."""

    name: str
    seed: int
    models: tuple[int, int]
    cc_dir: Path
    diff_dir: Path
    grounding_dir: Path
    device: str = "cpu"
    """Where the crosscoder is loaded (``crosscoder.device``)."""

    @functools.cached_property
    def cc(self) -> Any:
        cc = CrossCoder.load(self.cc_dir, map_location=self.device)
        cc.eval()
        return cc

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        return read_table(self.diff_dir, "latent_table")

    @functools.cached_property
    def scaling(self) -> pd.DataFrame:
        return read_table(self.diff_dir, "scaling")

    @functools.cached_property
    def assign(self) -> pd.DataFrame:
        return read_table(self.grounding_dir, "grounding")

    def specific(self, direction: str) -> list[int]:
        s = self.scaling
        rows = s[(s["direction"] == direction) & s["specific"].astype(bool) & (s["role"] != "baseline")]
        return sorted(int(j) for j in rows["latent"].unique())

    def labels(self, latents: list[int]) -> list[list[str]]:
        got = latent_labels(self.assign, latents)
        return [got[j] for j in latents]


Diffs = dict[str, dict[int, CrosscoderDiff]]


def doc_index(capture_dir: Path) -> list[dict]:
    return read_jsonl(capture_dir / "doc_index.jsonl", fix="delete the capture stage directory and rerun")


def apply_latent_metric_plugins(table: pd.DataFrame, context: dict) -> pd.DataFrame:
    """Add the columns returned by every ``lm_diff_latent_metrics`` hook (one value per latent, in table order)."""
    for result in hook().lm_diff_latent_metrics(table=table, context=context):
        for col, values in (result or {}).items():
            values = list(values)
            if len(values) != len(table):
                raise UserError(f"a lm_diff_latent_metrics plugin returned {len(values)} values for column {col!r}; "
                                f"expected one per latent ({len(table)})")
            if col in table.columns:
                raise UserError(f"a lm_diff_latent_metrics plugin returned column {col!r}, which already exists")
            table[col] = values
    return table


def crosscoder_diffs(cfg: RunConfig, stages: Stages, capture_dir: Path, layer: int,
                     crosscoders: dict[str, dict[int, Path]], models_of: dict[str, tuple[int, int]]) -> Diffs:
    """Run (or reuse) the diff and grounding stages of every crosscoder; returns their handles by name and seed.

    ``diff`` is keyed on the crosscoder, the capture, the layer and ``diff.*``; ``grounding`` on the diff stage and
    ``categories.*``, so a changed taxonomy or grounding threshold leaves the latent tables cached."""
    store: dict[str, ActivationStore] = {}

    def get_store() -> ActivationStore:
        if "s" not in store:
            store["s"] = ActivationStore(capture_dir / "store")
        return store["s"]

    out: Diffs = {}
    for name, by_seed in crosscoders.items():
        models = tuple(models_of[name])
        for seed, cc_dir in by_seed.items():
            key = {"capture": capture_dir.name, "layer": layer, "crosscoder": cc_dir.parent.name, "name": name,
                   "seed": seed, "models": list(models), "diff": dataclasses.asdict(cfg.diff), "version": 3}

            def diff_fn(d: Path, cc_dir=cc_dir, seed=seed, name=name, models=models) -> dict:
                cc = CrossCoder.load(cc_dir, map_location=cfg.crosscoder.device)
                cc.eval()
                s = get_store()
                table = latent_table(cc, s, layer, models, cfg.diff, progress=True)
                table = apply_latent_metric_plugins(table, {"crosscoder": cc, "store": s, "layer": layer,
                                                            "models": models, "name": name, "seed": seed, "config": cfg})
                scaling = latent_scaling(cc, s, layer, models, cfg=cfg.diff, table=table,
                                         tokens=cfg.diff.scaling_tokens, seed=seed, progress=True)
                write_table(table, d, "latent_table")
                write_table(scaling, d, "scaling")
                return {"latents": int(len(table))}

            diff_dir, _ = stages.run("diff", key, diff_fn, label=f"diff crosscoder {name} seed {seed}")
            gkey = {"diff": diff_dir.name, "capture": capture_dir.name, "layer": layer,
                    "categories": dataclasses.asdict(cfg.categories), "version": 1}

            def ground_fn(d: Path, cc_dir=cc_dir, models=models) -> dict:
                index = doc_index(capture_dir)
                g_ids = np.array([i for i, r in enumerate(index) if r["kind"] == "grounding"], dtype=np.int64)
                cat_of = {int(i): index[int(i)]["category"] for i in g_ids}
                cc = CrossCoder.load(cc_dir, map_location=cfg.crosscoder.device)
                cc.eval()
                ids, max_acts = store_prompt_max_acts(cc, get_store(), layer, models, doc_ids=g_ids, progress=True)
                assign = grounded_assign(max_acts, [cat_of[int(i)] for i in ids], get_taxonomy(cfg),
                                         cfg.categories.auroc_min, cfg.categories.q,
                                         specificity_min=cfg.categories.specificity_min, neutral=NEUTRAL)
                write_table(assign, d, "grounding")
                return {"grounding_prompts": int(len(g_ids))}

            g_dir, _ = stages.run("grounding", gkey, ground_fn, label=f"grounded categories {name} seed {seed}")
            out.setdefault(name, {})[seed] = CrosscoderDiff(name, seed, models, cc_dir, diff_dir, g_dir, cfg.crosscoder.device)
    return out


def sets(cfg: RunConfig, diffs: Diffs, seed: int) -> tuple[CrosscoderDiff, list[int], CrosscoderDiff, list[int]]:
    """(S crosscoder, S latents, T crosscoder, T latents) of one seed."""
    if cfg.design == "anchored":
        S, T = diffs["PB"][seed], diffs["PA"][seed]
        return S, S.specific("B"), T, T.specific("B")
    d = diffs["AB"][seed]
    return d, d.specific("B"), d, d.specific("A")


def set_triples(cfg: RunConfig, diffs: Diffs, seed: int) -> tuple[tuple[CrosscoderDiff, list[int], str, int], ...]:
    """((crosscoder, latents, set name, id offset) for S and T): T's ids are offset when T is another crosscoder, so
    ids stay unique in the tables that hold both sets."""
    S, s_ids, T, t_ids = sets(cfg, diffs, seed)
    offset_T = int(S.table["latent"].max()) + 1 if T is not S else 0
    return (S, s_ids, "S", 0), (T, t_ids, "T", offset_T)


def mass(d: CrosscoderDiff, latents: list[int], side: str) -> list[float]:
    t = d.table.set_index("latent")
    return [float(t.at[j, "mean_act"] * t.at[j, f"norm_{side}"]) for j in latents]


def stage_names(diffs: Diffs, seeds: list[int] | None = None, grounding: bool = True) -> dict:
    """{name: {seed: [diff stage, grounding stage]}}: the upstream part of a downstream stage's key. A stage that
    reads no category (controls, examples, quality) passes ``grounding=False`` and keys on the diff stages alone."""
    return {n: {s: [d.diff_dir.name] + ([d.grounding_dir.name] if grounding else [])
                for s, d in by.items() if seeds is None or s in seeds}
            for n, by in diffs.items()}
