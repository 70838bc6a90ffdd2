"""``openllm serve``: an OpenAI-compatible HTTP inference server with request batching.

``create_app(model, tokenizer)`` builds the FastAPI app; ``ServerThread`` runs it under uvicorn on a
background thread; ``run_server`` in the foreground. See docs/serve.md.
"""
from __future__ import annotations

from .app import ApiError, create_app
from .batcher import Batcher, Job, QueueFull, Row
from .chat import CHAT_STOPS, render_chat
from .server import ServerThread, app_from_source, run_server

__all__ = ["create_app", "ApiError", "Batcher", "Job", "Row", "QueueFull", "render_chat", "CHAT_STOPS",
           "ServerThread", "run_server", "app_from_source"]
