"""``python -m lm_diff.organisms``: regenerate the shipped diff_demo benchmark files and grounding prompts."""

from lm_diff.organisms.bench import write_benchmarks, write_grounding

if __name__ == "__main__":
    print(write_benchmarks())
    print(write_grounding())
