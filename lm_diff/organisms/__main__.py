"""``python -m lm_diff.organisms``: regenerate the shipped benchmark files and grounding prompts of both families
(``diff_demo`` + ``grounding/default.jsonl`` + ``diff_demo_probes``; ``diff_natural`` + ``grounding/natural.jsonl`` +
``diff_natural_probes``)."""

from lm_diff.organisms import natural_bench
from lm_diff.organisms.bench import write_benchmarks, write_grounding
from lm_diff.organisms.probe_text import write_natural_probes, write_probes

if __name__ == "__main__":
    print(write_benchmarks())
    print(write_grounding())
    print(write_probes())
    print(natural_bench.write_benchmarks())
    print(natural_bench.write_grounding())
    print(write_natural_probes())
