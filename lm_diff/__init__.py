"""lm_diff: explain why a fine-tune scores differently from its base model.

One package per stage, imports flowing one way (docs/architecture.md):
bench -> capture -> crosscoder -> diff -> categorize -> link -> report, chained by run/ and driven by cli.py.
"""

__version__ = "0.1.0"
