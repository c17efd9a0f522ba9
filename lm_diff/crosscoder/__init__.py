"""Crosscoder: the model (BatchTopK / L1, dedicated latents), its training (resumable, parallel workers), interop."""
