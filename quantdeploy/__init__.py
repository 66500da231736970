"""quantdeploy: pull, chat with, serve and benchmark quantized LLMs (GPTQ, AWQ, GGUF) through one interface."""

from .backends.base import Generation, GenerationParams, LoadedModel, ModelSpec
from .errors import QuantDeployError
from .models import load, load_model, resolve_model
from .registry import detect_format, get_backend, list_backends, register_backend
from .version import __version__

__all__ = ["Generation", "GenerationParams", "LoadedModel", "ModelSpec", "QuantDeployError", "detect_format",
           "get_backend", "list_backends", "load", "load_model", "register_backend", "resolve_model", "__version__"]
