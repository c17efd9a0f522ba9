"""Categorize: the taxonomy, grounding latents in categories, LLM annotators, the category shift between S and T."""
