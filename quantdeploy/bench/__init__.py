"""`quantdeploy bench`: speed, memory, bandwidth against the roofline, kernel evidence and quality.

runner (timings, GB/s) · kernels (what ran) · roofline (copy benchmark) · quality (perplexity, KL) ·
weights (bytes per token) · memory (peaks) · environment · report / html (json, md, html).
"""

from .runner import SCHEMA, BenchConfig, RequirementFailed, bench_model, run_bench

__all__ = ["SCHEMA", "BenchConfig", "RequirementFailed", "bench_model", "run_bench"]
