"""Diff: the per-latent table (decoder norms, Δnorm), latent scaling, controls, quality metrics, activating examples."""
