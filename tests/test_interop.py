"""dictionary_learning layout: keys/shapes, lossless round trip, foreign (plain) checkpoints, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lm_diff.crosscoder.interop import (
    dec_norm_diff,
    delta_from_dec_norm_diff,
    load_dictionary_learning,
    save_dictionary_learning,
)
from lm_diff.crosscoder.model import CrossCoder
from lm_diff.errors import UserError


def _trained_like(arch="batchtopk"):
    cc = CrossCoder(8, 2, 16, arch, k=3, normalisation="sqrt_d", seed=2)
    with torch.no_grad():
        for p in cc.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        cc.W_dec_LMD[0, 1] = 0.0                  # latent 0: model-0 only
    cc.fit_normalisation(torch.randn(64, 2, 8) * 3)
    if arch == "batchtopk":
        cc.threshold.fill_(0.2)
    return cc


@pytest.mark.parametrize("arch", ["batchtopk", "l1"])
def test_roundtrip_and_layout(tmp_path, arch):
    cc = _trained_like(arch)
    save_dictionary_learning(cc, tmp_path)
    t = load_file(str(tmp_path / "model.safetensors"))
    assert t["encoder.weight"].shape == (2, 8, 16) and t["encoder.bias"].shape == (16,)
    assert t["decoder.weight"].shape == (2, 16, 8) and t["decoder.bias"].shape == (2, 8)
    assert int(t["code_normalization_id"]) == 1
    assert ("k" in t) == (arch == "batchtopk")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_encoder_layers"] == 2 and cfg["activation_dim"] == 8 and cfg["dict_size"] == 16
    back = load_dictionary_learning(tmp_path)
    assert back.config() == cc.config()
    for k, v in cc.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = torch.randn(5, 2, 8)
    assert torch.equal(back.encode(x), cc.encode(x))


def test_foreign_checkpoint_and_dec_norm_diff(tmp_path):
    """A checkpoint without our lm_diff block (as their library writes it) loads with their encode semantics."""
    g = torch.Generator().manual_seed(0)
    W_enc, W_dec = torch.randn(2, 4, 6, generator=g), torch.randn(2, 6, 4, generator=g)
    W_dec[1, 2] = 0.0                            # latent 2 lives only in model 0 (A)
    save_file({"encoder.weight": W_enc, "encoder.bias": torch.zeros(6), "decoder.weight": W_dec,
               "decoder.bias": torch.zeros(2, 4), "code_normalization_id": torch.tensor(1),
               "k": torch.tensor(2, dtype=torch.int32), "threshold": torch.tensor(-1.0)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"activation_dim": 4, "dict_size": 6, "num_encoder_layers": 2, "k": 2}))
    cc = load_dictionary_learning(tmp_path)
    assert cc.arch == "batchtopk" and cc.k == 2
    x = torch.randn(3, 2, 4, generator=g)
    assert torch.allclose(cc.pre_acts(x), torch.einsum("bmd,mdl->bl", x, W_enc), atol=1e-5)
    assert float(cc.delta_norm()[2]) == 0.0 and float(dec_norm_diff(cc)[2]) == 1.0
    assert delta_from_dec_norm_diff(0.95) == pytest.approx(0.05)


def test_refuses_pickle_and_folded(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserError, match="never unpickles"):
        load_dictionary_learning(tmp_path)
    cc = _trained_like()
    cc.fold_normalisation()
    with pytest.raises(UserError, match="folded"):
        save_dictionary_learning(cc, tmp_path / "f")
