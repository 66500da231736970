"""Pull quantized models from the Hugging Face Hub (or a mirror) into a local, verified store."""

from .pull import PullRequest, PullResult, pull
from .store import Store, resolve_or_pull

__all__ = ["PullRequest", "PullResult", "Store", "pull", "resolve_or_pull"]
