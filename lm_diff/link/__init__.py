"""Link: benchmark score gaps joined with latent shifts (exposure, association, agreement) and the causal check."""
