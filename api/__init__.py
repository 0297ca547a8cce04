"""HTTP API (FastAPI). Never imports torch: validation uses the engine's torch-free modules."""
