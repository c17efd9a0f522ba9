"""Shared test helpers: self-contained functions that build tiny offline tokenizers and models (append only)."""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "User: what is the capital of France?\nAssistant: Paris is the capital of France.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 and some punctuation: ;:,.!?()[]{}",
    "Mathematics: 3 + 4 = 7, 12 * 12 = 144, the square root of 81 is 9.",
    "Once upon a time, in a land far away, there lived a curious engineer who loved tiny models.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer(tmp: str | Path | None = None, vocab_size: int = 2048, chat_template: bool = True):
    """A byte-level BPE tokenizer (special tokens <pad>=0, <bos>=1, <eos>=2, <unk>=3; BOS added by the post-processor).

    Trained on a small built-in corpus; saved to ``tmp`` when given (``AutoTokenizer.from_pretrained(tmp)`` reloads it).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    if tmp is not None:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(tmp))
    return fast


def make_tiny_model(kind: str = "gemma2", seed: int = 0, vocab_size: int = 2048, layers: int = 4, hidden: int = 64,
                    out: str | Path | None = None, **overrides):
    """A random-init tiny causal LM (``kind`` in llama, gemma2, gpt2) in eval mode, fp32; saved to ``out`` when given."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig

    heads = max(1, hidden // 32)
    if kind == "gemma2":
        cfg = Gemma2Config(vocab_size=vocab_size, num_hidden_layers=layers, hidden_size=hidden,
                           intermediate_size=hidden * 2, num_attention_heads=heads, num_key_value_heads=1,
                           head_dim=32, max_position_embeddings=512, sliding_window=128,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides)
    elif kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=layers, hidden_size=hidden,
                          intermediate_size=hidden * 2, num_attention_heads=heads, num_key_value_heads=1,
                          max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_layer=layers, n_embd=hidden, n_head=heads, n_positions=512,
                         bos_token_id=1, eos_token_id=2, **overrides)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    if out is not None:
        model.save_pretrained(str(out))
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic paired activations for crosscoder tests (crosscoder / train / metrics / interop).


def planted_pair_data(n_tokens: int = 16384, d: int = 32, n_shared: int = 24, n_a: int = 12, n_b: int = 12,
                      p_active: float = 0.06, seed: int = 0):
    """Paired activations [N, 2, d] built from planted sparse features.

    Shared feature i has its own random unit direction in each model (u_i^A != u_i^B) and fires with the same
    magnitude in both; A-only features write only into model 0 (A), B-only only into model 1 (B). Returns
    ``(acts_NMD, truth)`` with ``truth = {"dirs_FMD": [F, 2, d] (zero rows for the absent model), "kind": [F] list of
    "shared" | "A" | "B"}``.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    F = n_shared + n_a + n_b
    dirs = torch.randn(F, 2, d, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    dirs[n_shared:n_shared + n_a, 1] = 0.0
    dirs[n_shared + n_a:, 0] = 0.0
    kind = ["shared"] * n_shared + ["A"] * n_a + ["B"] * n_b
    active = torch.rand(n_tokens, F, generator=g) < p_active
    mags = (1.0 + torch.rand(n_tokens, F, generator=g)) * active
    acts = torch.einsum("nf,fmd->nmd", mags, dirs)
    return acts.contiguous(), {"dirs_FMD": dirs, "kind": kind}


class InMemoryPairSource:
    """Implements the ``ActivationStore.iter_batches`` / ``stats`` protocol over an in-memory [N, M, D] tensor.

    The first ``heldout`` rows form the held-out split. ``shuffle_buffer`` > 0 shuffles the train rows with a
    permutation seeded by ``seed`` (deterministic).
    """

    def __init__(self, acts_NMD, heldout: int = 0, layer: int = 0):
        self.acts = acts_NMD.float()
        self.heldout = int(heldout)
        self.layers = [layer]
        self.n_models = acts_NMD.shape[1]
        self.d_model = acts_NMD.shape[2]

    def stats(self, layer=None):
        x = self.acts
        return {"mean_MD": x.mean(0), "mean_norm_M": x.norm(dim=-1).mean(0),
                "mean_sq_norm_M": x.pow(2).sum(-1).mean(0), "count": x.shape[0]}

    def iter_batches(self, batch_size, layer=None, models=(0, 1), split="train", shuffle_buffer=0, seed=0,
                     drop_last=False, rows=None, **_):
        import torch

        x = {"train": self.acts[self.heldout:], "heldout": self.acts[:self.heldout], "all": self.acts}[split]
        x = x[:, list(models)]
        if shuffle_buffer > 0:
            x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))]
        for s in range(0, x.shape[0], batch_size):
            b = x[s:s + batch_size]
            if drop_last and b.shape[0] < batch_size:
                break
            yield (b if rows is None else b[rows[0]:rows[1]]).clone()
