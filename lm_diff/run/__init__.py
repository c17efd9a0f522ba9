"""Run: content-hashed stage cache and the pipeline that chains the stages."""
