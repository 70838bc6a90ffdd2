"""``openllm serve``: an OpenAI-compatible HTTP inference server with continuous batching.

``create_app(model, tokenizer)`` builds the FastAPI app; ``ServerThread`` runs it under uvicorn on a
background thread; ``run_server`` in the foreground; ``app_from_source`` loads a run, an export or a hub
version in the background once the server runs. See docs/serve.md.
"""

from __future__ import annotations

from .app import ApiError, create_app
from .chat import CHAT_STOPS, chat_prompt
from .engine import POLICIES, Engine, Job, QueueFull, Seq
from .server import ServerThread, app_from_source, run_server

__all__ = [
    "create_app",
    "ApiError",
    "Engine",
    "Job",
    "Seq",
    "QueueFull",
    "POLICIES",
    "chat_prompt",
    "CHAT_STOPS",
    "ServerThread",
    "run_server",
    "app_from_source",
]
