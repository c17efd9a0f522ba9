"""``python -m lm_diff.organisms``: regenerate the shipped benchmark files and grounding prompts of both families
(``diff_demo`` + ``grounding/default.jsonl``; ``diff_natural`` + ``grounding/natural.jsonl``)."""

from lm_diff.organisms import natural_bench
from lm_diff.organisms.bench import write_benchmarks, write_grounding

if __name__ == "__main__":
    print(write_benchmarks())
    print(write_grounding())
    print(natural_bench.write_benchmarks())
    print(natural_bench.write_grounding())
