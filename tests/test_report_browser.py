"""Latent-browser data and summary: output tokens through the unembedding, summary sentences, Markdown escaping."""

from __future__ import annotations

import torch
from torch import nn

from lm_diff.diff.logits import latent_logits, top_logits, unembedding
from lm_diff.report.markdown import _md_cell
from lm_diff.report.summary import build_summary, summary_lines


class _TinyLM(nn.Module):
    """The parts of a Hugging Face causal LM that :func:`unembedding` reads."""

    def __init__(self, V: int = 7, D: int = 4):
        super().__init__()
        self.model = nn.Module()
        self.model.norm = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V, bias=False)
        self.base_model = self.model

    def get_output_embeddings(self):
        return self.lm_head


def test_top_logits_match_brute_force_with_norm_weight():
    torch.manual_seed(0)
    lm = _TinyLM()
    with torch.no_grad():
        lm.model.norm.weight.copy_(torch.tensor([2.0, 0.5, 1.0, -1.0]))
    W_U, g = unembedding(lm)
    assert g is not None and torch.equal(g, lm.model.norm.weight)
    W_dec_LMD = torch.randn(5, 2, 4)
    pi, pv, ni, nv = top_logits(W_dec_LMD[[1, 3], 1], W_U, g, k=3)
    full = (W_dec_LMD[[1, 3], 1] * g) @ W_U.T
    assert torch.equal(pi, full.topk(3, dim=1).indices) and torch.allclose(pv, full.topk(3, dim=1).values)
    assert torch.equal(ni, (-full).topk(3, dim=1).indices) and torch.allclose(nv, -(-full).topk(3, dim=1).values)
    out = latent_logits(W_dec_LMD, [1, 3], 1, lm, None, k=3)
    assert set(out) == {1, 3} and [t for t, _ in out[3]["pos"]] == [str(int(i)) for i in pi[1]]
    assert out[3]["neg"][0][1] == round(float(nv[1, 0]), 4)


def _cat(name, delta, lo, hi, ratio, q, n_s, n_t, insufficient=False, frac=None, change=None):
    return {"name": name, "score_gap": {"delta": delta, "ci_low": lo, "ci_high": hi, "tasks": [f"t_{name}"]},
            "latent_shift": {"share_ratio": ratio, "ci_low": -0.5, "ci_high": None, "q_value": q, "n_S": n_s, "n_T": n_t,
                             "insufficient": insufficient},
            "latent_change": change, "causal": {"fraction": frac} if frac is not None else None}


def _change(ratio, lo, q, mds, n_x=40, n_sh=300):
    return {"ratio": ratio, "ci_low": lo, "ci_high": None, "q": q, "mds": mds, "n_specific": n_x, "n_shared": n_sh,
            "insufficient": False}


def test_summary_sentences_from_numbers():
    report = {"categories": [_cat("safety", 100.0, 100.0, 100.0, 1.43, 0.027, 42, 21, frac=0.88),
                             _cat("code", -88.0, -94.0, -80.0, -0.64, 0.001, 31, 104,
                                  change=_change(2.0, 0.8, 0.001, 0.7)),
                             _cat("hallucination", 0.0, -1.0, 1.0, 0.2, 0.6, 8, 4, change=_change(0.3, -0.2, 0.4, 1.1)),
                             _cat("math", 2.0, 0.0, 6.0, -1.0, 0.35, 0, 3, insufficient=True)],
              "ranking": ["code", "safety", "hallucination", "math"],
              "quality": {"available": True, "passed": True, "models": {"A": {"ev": 0.91}, "B": {"ev": 0.9}},
                          "gates": [{"metric": "ev", "model": "A", "passed": True}]},
              "controls": {"identity": {"passed": True, "n_b_specific": 0}},
              "overall": {"delta": 22.3, "ci_low": 21.3, "ci_high": 23.3, "n": 928}}
    s = build_summary(report)
    assert s["findings"][0].startswith(
        "B loses code (-88 pts [-94, -80] on t_code); its latents changed (40 model-specific vs 300 shared latents, "
        "enrichment +200 % [+80 %, unbounded] q 0.001); direction: 31 fine-tune-specific code latents vs 104")
    assert s["findings"][1] == ("B gains safety (+100 pts on t_safety); direction: 42 fine-tune-specific safety latents "
                                "vs 21 base-specific, share ratio +143 % [-50 %, unbounded], q 0.027; ablating them "
                                "closes 88 % of the gap.")
    assert len(s["findings"]) == 2  # hallucination moves nowhere; math is insufficient and its gap CI touches 0
    assert s["unsupported"] == "Too few latents to say anything about math (0 vs 3 latents)."
    # with the change test, "too few" is the headline's: a category it can test is not listed for a thin S/T split
    math = report["categories"][3]
    math["latent_change"] = _change(-0.4, -0.9, 1.0, 2.0, n_x=3, n_sh=60)
    assert build_summary(report)["unsupported"] is None
    math["latent_change"] = {"ratio": None, "q": None, "n_specific": 0, "n_shared": 2, "insufficient": True}
    assert build_summary(report)["unsupported"] == ("Too few latents to say anything about math (0 model-specific, "
                                                    "2 shared latents).")
    math["latent_change"] = None
    assert s["quality"] == "Quality gates: all 1 pass (explained variance 0.91, 0.90)."
    assert s["controls"] == "Controls: identity control passes, 0 specific latents on (A, A)."
    assert summary_lines(s)[0].startswith("Overall, B − A = +22.3 points [+21.3, +23.3] over 928")
    report["categories"] = report["categories"][2:]
    assert build_summary(report)["findings"] == [
        "No category moves: no benchmark gap excludes 0 and no category's latents changed or shifted."]
    # a change the run could not call says how large a change it could have detected
    report["categories"][0]["latent_change"] = _change(0.3, -0.2, 0.02, 1.1)
    report["categories"][0]["latent_shift"]["q_value"] = 0.01
    f = build_summary(report)["findings"][0]
    assert "its latents did not change significantly (40 model-specific vs 300 shared latents, enrichment +30 % " in f
    assert "this run detects an enrichment of +110 % or more" in f


def test_markdown_cells_escape_tags_not_comparisons():
    assert _md_cell("ev >= 0.7 | a < 2 | a<b") == "ev >= 0.7 \\| a < 2 \\| a\\<b"
    assert _md_cell("</table><script>x") == "\\</table>\\<script>x"


def test_lm_eval_loaded_model_notes_filtered_and_training_status_line(caplog):
    import logging

    from lm_diff.bench.evaluate import _quiet_loaded_model
    from lm_diff.crosscoder.workers import status_line

    log = logging.getLogger("lm_eval.models.huggingface")
    with caplog.at_level(logging.WARNING, logger="lm_eval.models.huggingface"):
        with _quiet_loaded_model():
            log.warning("`pretrained` model kwarg is not of type `str`. Many other model arguments may be ignored.")
            log.warning("Passed an already-initialized model through `pretrained`, assuming single-process call")
            log.warning("something else")
        log.warning("`pretrained` model kwarg is not of type `str`. (outside lm_diff's call)")
    assert [r.getMessage()[:14] for r in caplog.records] == ["something else", "`pretrained` m"]
    rec = {"step": 119, "loss": 0.01234, "l0": 8.0, "ev": [0.81, 0.79]}
    assert status_line("AB seed 0", 300, rec) == "AB seed 0: step 120/300  loss 0.01234  L0 8.0  EV 0.810 0.790"
    assert status_line("AB seed 0", 300, {}) == "AB seed 0: starting (0/300)"
