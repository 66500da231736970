"""Decode loops for HF-format quantized models (GPTQ / AWQ): a plain one (CPU and CUDA), and the fast path."""
