"""Built-in ``lm_diff_task_categories``: capability categories for common upstream lm-eval tasks.

Used for tasks (or groups) that declare no ``metadata.category``; a declared category always wins, and
``benchmarks.task_categories`` in the config wins over both. Keys are task/group names or ``fnmatch`` patterns.
"""

from __future__ import annotations

from lm_diff.plugins.hookspecs import hookimpl

UPSTREAM_TASK_CATEGORIES: dict[str, str] = {
    # instruction following
    "ifeval": "instruction_following",
    "ifeval_*": "instruction_following",
    "leaderboard_ifeval": "instruction_following",
    # hallucination / truthfulness
    "truthfulqa": "hallucination",
    "truthfulqa_*": "hallucination",
    "truthfulqa-multi": "hallucination",
    "nq_open": "factual_verification",
    "triviaqa": "factual_verification",
    # multilingual
    "belebele": "multilingual",
    "belebele_*": "multilingual",
    "xnli": "multilingual",
    "xnli_*": "multilingual",
    "global_mmlu*": "multilingual",
    "xcopa*": "multilingual",
    "xstorycloze*": "multilingual",
    "xwinograd*": "multilingual",
    "paws-x*": "multilingual",
    "paws_*": "multilingual",
    "lambada_openai_mt*": "multilingual",
    "openai_mmmlu*": "multilingual",
    "mmlu_prox*": "multilingual",
    # code
    "mbpp": "code",
    "mbpp_*": "code",
    "humaneval": "code",
    "humaneval_*": "code",
    "humaneval_infilling": "code",
    "cruxeval*": "code",
    # math
    "gsm8k": "math",
    "gsm8k_*": "math",
    "gsm8k_platinum*": "math",
    "gsm_plus*": "math",
    "mgsm_*": "math",
    "minerva_math*": "math",
    "hendrycks_math*": "math",
    "mathqa": "math",
    "asdiv": "math",
    "arithmetic*": "math",
    "aime*": "math",
    # safety
    "toxigen": "safety",
    "realtoxicityprompts": "safety",
    "wmdp": "safety",
    "wmdp_*": "safety",
    "bbq": "safety",
    "crows_pairs*": "safety",
    "simple_cooccurrence_bias*": "safety",
    "discrim_eval*": "safety",
    # structured output
    "jsonschema_bench*": "structured_output",
}


@hookimpl
def lm_diff_task_categories():
    """Categories of common upstream lm-eval tasks (exact names and ``fnmatch`` patterns)."""
    return dict(UPSTREAM_TASK_CATEGORIES)
