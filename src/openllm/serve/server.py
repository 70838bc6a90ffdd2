"""Running the app under uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks,
notebooks)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["run_server", "ServerThread", "app_from_source", "header_timeout_protocol"]

DEFAULT_HEADER_TIMEOUT = 30.0


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive within ``seconds`` of
    its opening or of its previous response (uvicorn times out idle keep-alive connections, but not a client
    that sends half a request and stalls: enough of those exhaust the server's file descriptors)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            waiting_for = self.cycle  # a new request replaces the cycle once its headers are complete
            self._header_timer = self.loop.call_later(seconds, self._headers_late, waiting_for)

        def _headers_late(self, waiting_for) -> None:
            if self.cycle is waiting_for and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


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
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    shutdown_timeout: float = 10.0,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
) -> bool:
    """Serve until SIGTERM or Ctrl-C. On either, the server stops accepting connections and lets in-flight
    requests finish for up to ``shutdown_timeout`` seconds; then the ones still running are answered (a 503
    in OpenAI's error shape, or an error event and ``[DONE]`` on a stream) and it returns, True when a signal
    ended it, so the process can exit 0."""
    import uvicorn

    signals: list[int] = []

    def record(sig: int, frame: Any) -> None:
        signals.append(sig)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # the stragglers are answered at shutdown_timeout (below); uvicorn waits a moment more for the answers
        # uvicorn types it int, and waits it out with asyncio (any number of seconds)
        timeout_graceful_shutdown=shutdown_timeout + _ANSWER_S,  # type: ignore[arg-type]
        http=header_timeout_protocol(header_timeout),
    )
    server = uvicorn.Server(config)

    def answer_stragglers() -> None:
        while not server.should_exit:
            time.sleep(0.05)
        time.sleep(shutdown_timeout)
        engine = getattr(getattr(app.state, "server", None), "engine", None)
        if engine is not None:
            engine.stop()

    threading.Thread(target=answer_stragglers, name="openllm-shutdown", daemon=True).start()
    # uvicorn re-raises the signal it shut down for, under the handler installed before it ran: a handler
    # that only records it lets the process exit normally after a graceful shutdown
    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return bool(signals)


_ANSWER_S = 2.0


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
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        import uvicorn

        self.app = app
        self.host = host
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="on",
            timeout_graceful_shutdown=shutdown_timeout,  # type: ignore[arg-type]  # (int in uvicorn's types)
            http=header_timeout_protocol(header_timeout),
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
