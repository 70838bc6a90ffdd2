"""Running the app under uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks,
notebooks)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["run_server", "ServerThread", "app_from_source"]


def app_from_source(
    source: str, *, device: str = "auto", hub: Any = None, model_name: str | None = None, **app_options: Any
) -> Any:
    """:func:`~openllm.serve.app.create_app` over ``openllm.load(source)``, loaded on a background thread
    once the server runs (``/health`` answers 503 until then; ``app.state.server.load_error`` says why it
    failed). The model id defaults to the hub reference (``OWNER/NAME@VERSION``) or the folder's name."""
    from ..errors import OpenLLMError
    from ..loading import load
    from .app import create_app

    holder: dict[str, Any] = {}

    def load_model() -> tuple[Any, Any]:
        loaded = load(source, device=device, hub=hub)
        if loaded.tokenizer is None:
            raise OpenLLMError(f"{source} holds no tokenizer (tokenizer.model); serve a run or an export with one")
        holder["app"].state.loaded = loaded
        if model_name is None and loaded.hub_ref:
            holder["app"].state.server.model_name = loaded.hub_ref
        return loaded.model, loaded.tokenizer

    name = model_name or Path(str(source).rstrip("/")).name or str(source)
    if model_name is None and not Path(source).expanduser().exists():
        name = str(source)  # a hub reference names itself
    app = create_app(load=load_model, model_name=name, **app_options)
    app.state.loaded = None
    holder["app"] = app
    return app


def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", shutdown_timeout: float = 10.0
) -> bool:
    """Serve until SIGTERM or Ctrl-C. On either, the server stops accepting connections, lets in-flight
    requests finish for up to ``shutdown_timeout`` seconds, cancels the rest, and returns (True when a
    signal ended it, so the process can exit 0)."""
    import uvicorn

    signals: list[int] = []

    def record(sig: int, frame: Any) -> None:
        signals.append(sig)

    # uvicorn re-raises the signal it shut down for, under the handler installed before it ran: a handler
    # that only records it lets the process exit normally after a graceful shutdown
    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return bool(signals)


class ServerThread:
    """A real uvicorn server on a background thread; ``port=0`` picks a free port. Use as a context
    manager; ``url`` is ``http://HOST:PORT``."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        shutdown_timeout: float = 2.0,
    ) -> None:
        import uvicorn

        self.app = app
        self.host = host
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=shutdown_timeout
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="openllm-serve", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
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

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
