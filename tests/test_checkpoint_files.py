"""A broken crosscoder checkpoint gives one UserError naming the file and the fix, never a library traceback."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from lm_diff.crosscoder.model import CONFIG_FILE, WEIGHTS_FILE, CrossCoder
from lm_diff.errors import UserError


@pytest.fixture()
def saved(tmp_path):
    CrossCoder(8, 2, 32, "batchtopk", k=4, seed=1).save(tmp_path / "cc")
    return tmp_path / "cc"


def test_intact_checkpoint_loads(saved):
    assert CrossCoder.load(saved).W_dec_LMD.shape == (32, 2, 8)


def test_truncated_weights(saved):
    w = saved / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt or mismatched crosscoder weights.*--force"):
        CrossCoder.load(saved)


def test_pickle_renamed_safetensors(saved):
    (saved / WEIGHTS_FILE).write_bytes(pickle.dumps({"W": torch.zeros(2)}))
    with pytest.raises(UserError, match=WEIGHTS_FILE):
        CrossCoder.load(saved)


def test_weights_of_another_d_model(saved, tmp_path):
    CrossCoder(16, 2, 32, "batchtopk", k=4, seed=1).save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / WEIGHTS_FILE, saved / WEIGHTS_FILE)
    with pytest.raises(UserError, match="mismatched"):
        CrossCoder.load(saved)


def test_config_that_is_not_json(saved):
    (saved / CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not a readable crosscoder config"):
        CrossCoder.load(saved)
