"""The shared diff-artifact fixture (tests/fixtures/make_fixtures.py) in the vocabulary of lm_diff.schema."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_fixtures as MF  # noqa: E402


def in_vocabulary(run_dir: Path) -> Path:
    """The shared fixture's tables in lm_diff.schema's vocabulary (shift columns named as the shift stage names them;
    the latent sets and scaling directions explicit)."""
    stage = next((run_dir / "stages").glob("diff-*"))
    shift = pd.read_parquet(stage / "shift.parquet")
    shift = shift.rename(columns={"share_ratio_lo": "ci_low", "share_ratio_hi": "ci_high", "fisher_p": "p_value",
                                  "fisher_q": "q_value"}).assign(method="single_seed")
    # the category change test, the latent headline (docs/method.md#category-change), in CATS order
    inf = float("inf")
    shift = shift.assign(change_ratio=[4.67, -0.4, 0.3, 1.5, None], change_ci_low=[2.1, -0.8, -0.2, -0.1, None],
                         change_ci_high=[inf, inf, inf, inf, None], change_mds=[1.2, 0.9, 1.4, 1.8, None],
                         change_p=[0.0004, 0.99, 0.3, 0.004, None],
                         change_q=[0.0014, 0.99, 0.4, 0.008, None], n_specific=[6, 5, 4, 4, 2],
                         n_shared=[10, 80, 30, 16, 12], change_insufficient=[False, False, False, False, True])
    shift.to_parquet(stage / "shift.parquet")
    lat = pd.read_parquet(stage / "latents.parquet")
    lat["set"] = lat["tag"].map({"B-only": "S", "A-only": "T"})
    lat.to_parquet(stage / "latents.parquet")
    sc = pd.read_parquet(stage / "scaling.parquet")
    sc = sc.assign(direction=sc["set"].map({"S": "B", "T": "A"}), role="candidate", specific=sc["selected"])
    sc.to_parquet(stage / "scaling.parquet")
    return run_dir


def diff_artifacts(run_dir: Path) -> Path:
    """``make_fixtures.write_diff_artifacts`` into ``run_dir``, in the vocabulary."""
    return in_vocabulary(MF.write_diff_artifacts(run_dir))
