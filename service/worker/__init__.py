"""The Celery worker: one task, a thin adapter over the job runner (and so over stain_slide)."""
