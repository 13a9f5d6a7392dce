"""Durable job records, the storage layout and the queue adapters (Celery, in-process)."""
