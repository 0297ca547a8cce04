"""Celery workers: thin tasks that load a job by id, call the engine and record the outcome."""
