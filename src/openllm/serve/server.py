"""Running the app under uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks,
notebooks)."""
from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["run_server", "ServerThread", "app_from_source"]


def app_from_source(source: str, *, device: str = "cpu", hub: Any = None, model_name: str | None = None,
                    **app_options: Any) -> Any:
    """``openllm.load(source)`` and :func:`~openllm.serve.app.create_app` on it. The model id defaults to
    the hub reference (``OWNER/NAME@VERSION``) or the folder's name."""
    from pathlib import Path

    from ..errors import OpenLLMError
    from ..loading import load
    from .app import create_app

    loaded = load(source, device=device, hub=hub)
    if loaded.tokenizer is None:
        raise OpenLLMError(f"{source} holds no tokenizer (tokenizer.model); serve a run or an export with one")
    name = model_name or loaded.hub_ref or Path(str(source).rstrip("/")).name or str(source)
    app = create_app(loaded.model, loaded.tokenizer, model_name=name, **app_options)
    app.state.loaded = loaded
    return app


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C stops it cleanly)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class ServerThread:
    """A real uvicorn server on a background thread; ``port=0`` picks a free port. Use as a context
    manager; ``url`` is ``http://HOST:PORT``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        import uvicorn

        self.app = app
        self.host = host
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="openllm-serve", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
