"""Offline batch generation: many prompts through one loaded model, results in input order.

requests (parsing and checking one request) · runner (concurrency, ordering, `generate_batch`) · jsonl (the
resumable output file) · job (`quantdeploy generate`: file in, file out, progress bar).
"""

from .runner import BatchResult, generate_batch

__all__ = ["BatchResult", "generate_batch"]
