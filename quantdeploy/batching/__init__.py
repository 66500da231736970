"""Continuous batching: the scheduler and KV block pool that let one loaded model serve many sequences at once.

Torch-free: the GGUF backend (llama.cpp) and the torch engine each bring a Stepper that runs the planned steps.
"""

from .blocks import BlockPool
from .scheduler import Handle, QueueFull, Sampled, Scheduler, Sequence, Stepper, Work

__all__ = ["BlockPool", "Handle", "QueueFull", "Sampled", "Scheduler", "Sequence", "Stepper", "Work"]
