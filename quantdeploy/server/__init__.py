"""`quantdeploy serve`: an OpenAI-compatible HTTP server over any loaded model (GPTQ, AWQ, GGUF).

`create_app(settings)` builds a fresh FastAPI app (no module globals); `serve()` binds and runs it with uvicorn.
"""

from .app import create_app
from .config import ServerSettings

__all__ = ["ServerSettings", "create_app"]
