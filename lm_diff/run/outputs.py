"""Reading finished stage outputs for the report: from the stage directories of a run (``OUT/stages/<name>-<hash>/``,
found through the newest finished ``report`` stage, which names the stages it read), or from one directory holding
every artifact (``DIR`` itself or ``DIR/diff``). Tables are read through :mod:`lm_diff.schema`; the expected files and
columns are listed in docs/report_schema.md ("Inputs").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from lm_diff.errors import UserError
from lm_diff.io import read_json
from lm_diff.run.stages import STAGES
from lm_diff.schema import read_table

# artifact -> (file, the stage that writes it in a run)
ARTIFACTS = {
    "latents": ("latents.parquet", "categorize"),
    "categories": ("categories.parquet", "categorize"),
    "scaling": ("scaling.parquet", "diff"),
    "shift": ("shift.parquet", "shift"),
    "seeds": ("seeds.json", "shift"),
    "doc_activations": ("doc_activations.parquet", "examples"),
    "examples": ("examples.jsonl", "examples"),
    "controls": ("controls.json", "controls"),
    "quality": ("quality.json", "quality"),
    "causal": ("causal.json", "causal"),
    "organism": ("organism.json", "report"),
}


EVIDENCE = ("auroc", "auroc_rest", "q")
"""Grounding evidence columns of categories.parquet carried to the latent cards (AUROC vs neutral prompts, vs the
other categories' prompts, BH q)."""


@dataclass
class DiffArtifacts:
    """The latent-side outputs of a run (each part optional)."""

    dirs: dict[str, Path] = field(default_factory=dict)
    """artifact -> the directory it was read from"""
    latents: Optional[pd.DataFrame] = None
    """Per-latent table merged with scaling and categories (latent, delta_norm, set, nu_eps, nu_r, selected, category)."""
    categories: Optional[pd.DataFrame] = None
    """(latent, set, category) of assigned latents."""
    shift: Optional[pd.DataFrame] = None
    examples: dict = field(default_factory=dict)
    """(latent, set or None) -> the examples.jsonl record ({examples: [{text, act, tokens, acts, kind}], ...})"""
    doc_acts: Optional[pd.DataFrame] = None
    quality: Optional[dict] = None
    controls: Optional[dict] = None
    causal: Optional[dict] = None
    organism: Optional[dict] = None
    config_path: Optional[Path] = None

    @property
    def source(self) -> Optional[Path]:
        """The directory reported as the diff input (where the shift, else the latents, came from)."""
        return self.dirs.get("shift") or self.dirs.get("latents")


def _finished(d: Path) -> bool:
    return (d / "DONE.json").exists() or (d / "DONE").exists()


def _newest(dirs: list[Path]) -> Optional[Path]:
    return max(dirs, key=lambda c: c.stat().st_mtime) if dirs else None


def find_outputs(diff: str | Path) -> dict[str, Path]:
    """artifact -> directory holding it, for ``--diff DIR`` (see module docstring). JSON artifacts not found in the
    stages are taken from ``DIR`` itself when there (a manifest or control file dropped beside the run)."""
    root = Path(diff).expanduser()
    if not root.exists():
        raise UserError(f"{root}: no such directory; pass the lm-diff run directory (with stages/) as --diff")
    found = _in_stages(root)
    if not found:
        raise UserError(f"{root}: no diff artifacts (stages/*/shift.parquet, latents.parquet, ...); run `lm-diff run` "
                        "first or omit --diff for a benchmarks-only report")
    for a, (f, _) in ARTIFACTS.items():
        if a not in found and f.endswith(".json") and (root / f).exists():
            found[a] = root
    return found


def _in_stages(root: Path) -> dict[str, Path]:
    for flat in (root, root / "diff"):
        if any((flat / f).exists() for f, _ in ARTIFACTS.values() if f.endswith(".parquet")):
            return {a: flat for a, (f, _) in ARTIFACTS.items() if (flat / f).exists()}
    stages = root / STAGES
    if not stages.is_dir():
        return {}
    report = _newest([d for d in stages.glob("report-*") if _finished(d)])
    if report is not None:
        inputs = read_json(report / "KEY.json").get("inputs") or {}
        found = {a: stages / name for a, name in inputs.items() if (stages / name / ARTIFACTS[a][0]).exists()}
        if (report / ARTIFACTS["organism"][0]).exists():
            found["organism"] = report
        return found
    found = {}
    for a, (f, _) in ARTIFACTS.items():  # no report stage (an older or interrupted run): the newest finished stage
        if (d := _newest([d for d in stages.glob("*-*") if _finished(d) and (d / f).exists()])) is not None:
            found[a] = d
    return found


def _json(p: Path) -> Optional[dict]:
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON ({exc.msg}); rerun the stage that wrote it") from None


def read_examples(path: Path) -> dict:
    """examples.jsonl (one latent per line: {latent, set, examples: [{text, act, tokens?, acts?, kind?}], and the
    latent-browser fields of docs/report_schema.md}) -> {(latent, set or None): record}."""
    out: dict = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key = (int(r["latent"]), r.get("set"))
            items = [{**e, "text": str(e["text"]), "act": e.get("act")} for e in r["examples"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}:{n}: not an examples row {{latent, set, examples: [{{text, act}}]}} "
                            f"({type(exc).__name__}: {exc}); rerun the examples stage") from None
        rec = out.setdefault(key, {**r, "examples": []})
        rec["examples"].extend(items)
    return out


def read_outputs(dirs: dict[str, Path], config_path: Optional[Path] = None) -> DiffArtifacts:
    """Read every artifact named in ``dirs`` (artifact -> directory)."""
    art = DiffArtifacts(dirs=dict(dirs), config_path=config_path)

    def table(a: str, name: Optional[str] = None) -> Optional[pd.DataFrame]:
        return read_table(dirs[a], name or a) if a in dirs else None

    lat = table("latents")
    sc = table("scaling")
    if sc is not None and lat is not None:
        keep = [c for c in sc.columns if c not in lat.columns or c in ("latent", "set")]
        on = ["latent", "set"] if "set" in sc.columns else ["latent"]
        lat = lat.merge(sc[keep], on=on, how="left")
    cats = table("categories")
    if cats is not None:
        if "assigned" in cats.columns:
            cats = cats[cats["assigned"].astype(bool)]
        art.categories = cats[["latent", "set", "category"] + [c for c in EVIDENCE if c in cats.columns]].copy()
        if lat is not None:
            first = art.categories.groupby(["latent", "set"], as_index=False)["category"].first()
            lat = lat.drop(columns=["category"], errors="ignore").merge(first, on=["latent", "set"], how="left")
    if lat is not None and "selected" not in lat.columns:
        lat["selected"] = lat["set"].isin(["S", "T"])
    art.latents = lat
    art.shift = table("shift")
    art.doc_acts = table("doc_activations")
    if "examples" in dirs:
        art.examples = read_examples(dirs["examples"] / ARTIFACTS["examples"][0])
    art.quality = _json(dirs["quality"] / "quality.json") if "quality" in dirs else None
    controls = _json(dirs["controls"] / "controls.json") if "controls" in dirs else None
    seeds = _json(dirs["seeds"] / "seeds.json") if "seeds" in dirs else None
    if seeds is not None:
        controls = {"seeds": seeds, **(controls or {})}
    art.controls = controls
    art.causal = _json(dirs["causal"] / "causal.json") if "causal" in dirs else None
    art.organism = _json(dirs["organism"] / "organism.json") if "organism" in dirs else None
    return art


def read_diff_artifacts(diff: str | Path) -> DiffArtifacts:
    """The latent-side outputs under ``--diff DIR``."""
    root = Path(diff).expanduser()
    cfgp = root / "config.yaml"
    return read_outputs(find_outputs(root), cfgp if cfgp.exists() else None)


def cards_from(art: DiffArtifacts) -> list[dict]:
    """Latent-browser cards: every selected latent of S and T that carries a category (all selected latents when no
    category table was read), S before T, most specific first; each with its examples record (when there is one)."""
    lat = art.latents
    if lat is None:
        return [{"latent": j, "set": s, **rec} for (j, s), rec in art.examples.items()]
    sel = lat[lat["selected"].fillna(False).astype(bool)]
    if art.categories is not None and "category" in sel.columns:
        sel = sel[sel["category"].notna()]
    sel = sel.assign(_spec=(sel["delta_norm"]).where(sel["set"] == "S", 1 - sel["delta_norm"]))
    sel = sel.sort_values(["set", "_spec"], ascending=[True, False])
    cats: dict = {}
    for r in (art.categories.to_dict("records") if art.categories is not None else []):
        ev = {k: (None if pd.isna(r[k]) else float(r[k])) for k in EVIDENCE if k in r}
        cats.setdefault((int(r["latent"]), r["set"]), []).append({"category": r["category"], **ev})
    out = []
    for _, r in sel.iterrows():
        j, s = int(r["latent"]), r["set"]
        rec = art.examples.get((j, s)) or art.examples.get((j, None)) or {}
        out.append({**rec, "latent": j, "set": s, "examples": rec.get("examples") or [],
                    "categories": cats.get((j, s), [])})
    return out
