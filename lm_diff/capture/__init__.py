"""Capture: the corpus, paired activation capture over identical token ids, the activation store."""
