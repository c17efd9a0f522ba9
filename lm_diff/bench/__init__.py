"""Benchmarks: lm-eval task suites, task -> category, running lm-eval, joining per-item results of both models."""
