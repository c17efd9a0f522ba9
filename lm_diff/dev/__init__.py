"""Developer tools that read finished runs; they import only the foundation (lm_diff.io, lm_diff.errors), no stage."""
