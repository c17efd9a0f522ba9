"""The vocabulary of the tables passed between stages: column names and the column set of each artifact.

Every stage writes and reads its tables through :func:`write_table` / :func:`read_table`, which check the columns: a
table missing one of its required columns is refused with the file and the column named. The names here are the
ones docs/report_schema.md uses ("Inputs"); there are no aliases.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pandas as pd

from lm_diff.errors import UserError
from lm_diff.io import atomic_path

# Column names shared by every statistics table.
P_VALUE = "p_value"
Q_VALUE = "q_value"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"
METHOD = "method"
LATENT = "latent"
SET = "set"
CATEGORY = "category"

# Latent sets (docs/architecture.md): S = fine-tune-specific latents, T = the comparison set.
SETS = ("S", "T")
# Shift methods.
SINGLE_SEED = "single_seed"
POOLED_SEEDS = "pooled_seeds"

# Which categories the fine-tune changed, either way, the latent headline (docs/method.md#category-change): columns
# of ``categorize.change.category_change``, carried in the shift table beside the share ratio (report: latent_change).
CHANGE_RATIO = "change_ratio"
CHANGE_P = "change_p"
CHANGE_Q = "change_q"
N_SPECIFIC = "n_specific"
N_SHARED = "n_shared"
CHANGE_INSUFFICIENT = "change_insufficient"
CHANGE_CI_LOW = "change_ci_low"
CHANGE_CI_HIGH = "change_ci_high"
CHANGE_MDS = "change_mds"
CHANGE_COLUMNS = (CHANGE_RATIO, CHANGE_CI_LOW, CHANGE_CI_HIGH, CHANGE_P, CHANGE_Q, CHANGE_MDS, N_SPECIFIC, N_SHARED,
                  CHANGE_INSUFFICIENT)


@dataclasses.dataclass(frozen=True)
class Table:
    """One artifact table: its file name and the columns every reader may rely on."""

    file: str
    """File name inside the stage directory."""
    columns: tuple[str, ...]
    """Required columns (more may be present)."""


TABLES: dict[str, Table] = {
    "latent_table": Table("latent_table.parquet", (LATENT, "delta_norm", "dead", "mean_act", "tag")),
    "scaling": Table("scaling.parquet", (LATENT, "direction", "role", "nu_eps", "nu_r", "stable", "specific")),
    "grounding": Table("grounding.parquet", (LATENT, CATEGORY, "auroc", "assigned")),
    "latents": Table("latents.parquet", (LATENT, SET, "delta_norm")),
    "categories": Table("categories.parquet", (LATENT, SET, CATEGORY)),
    "shift": Table("shift.parquet", (CATEGORY, "n_S", "n_T", "N_S", "N_T", "share_ratio", "count_ratio", CI_LOW,
                                     CI_HIGH, P_VALUE, Q_VALUE, "insufficient", METHOD)),
    "shift_main_seed": Table("shift_main_seed.parquet", (CATEGORY, "n_S", "n_T", "share_ratio", CI_LOW, CI_HIGH,
                                                         P_VALUE, Q_VALUE, METHOD)),
    "doc_activations": Table("doc_activations.parquet", ("task", "doc_id", LATENT, SET, "act")),
}


def table_path(stage_dir: Path, name: str) -> Path:
    return Path(stage_dir) / _table(name).file


def _table(name: str) -> Table:
    if name not in TABLES:
        raise KeyError(f"unknown artifact table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def check_columns(df: pd.DataFrame, name: str, where: str | Path) -> pd.DataFrame:
    """``df`` unchanged when it has every column of table ``name``; else a UserError naming ``where`` and the column."""
    missing = [c for c in _table(name).columns if c not in df.columns]
    if missing:
        raise UserError(f"{where}: the {name} table lacks column(s) {', '.join(missing)}; rerun the stage that wrote it "
                        "(column names are listed in docs/report_schema.md)")
    return df


def write_table(df: pd.DataFrame, stage_dir: Path, name: str) -> Path:
    """Check ``df`` against table ``name`` and write it (atomically) into ``stage_dir``."""
    path = table_path(stage_dir, name)
    check_columns(df, name, f"{path} (while writing)")
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp)
    return path


def read_table(stage_dir: Path, name: str, required: bool = True) -> Optional[pd.DataFrame]:
    """Read table ``name`` from ``stage_dir`` and check its columns; None when absent and not ``required``."""
    path = table_path(stage_dir, name)
    if not path.exists():
        if required:
            raise UserError(f"{path}: missing; rerun the stage that writes the {name} table")
        return None
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # corrupt / partial file
        raise UserError(f"{path}: cannot be read as parquet ({type(exc).__name__}); rerun the stage that wrote it") from None
    return check_columns(df, name, path)
