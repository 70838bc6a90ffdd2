"""openllm serve MODEL [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch N] [--kv-cache-tokens N]"""

from __future__ import annotations

import argparse
import math
import os

from .common import add_device_option, add_hub_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run folder, an export folder, or OWNER/NAME@VERSION on the hub")
    add_hub_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every endpoint but /health "
        "(default: $OPENLLM_API_KEY; none: open)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="the model id /v1/models reports (default: a run or export folder's name; a hub model's "
        "OWNER/NAME@VERSION reference as given)",
    )
    add_device_option(p)
    p.add_argument(
        "--max-batch", type=int, default=32, help="most sequences generated together: the KV cache's slots (default 32)"
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=None,
        help="tokens the KV cache holds in all, split evenly over the --max-batch slots; a request's "
        "prompt + max_tokens must fit one slot (default: a full context per slot)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=256,
        help="most prompt tokens read per scheduler step, so long prompts do not stall the "
        "sequences decoding (default 256)",
    )
    p.add_argument(
        "--batching",
        choices=["continuous", "static"],
        default="continuous",
        help="continuous: sequences join and leave the running batch at every step (default); "
        "static: a batch runs until all its sequences finish",
    )
    p.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="compute every prompt in full (by default the keys and values of a prompt's longest prefix already "
        "in the KV cache, a shared system prompt or an earlier turn of the chat, are reused; outputs are the same)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 << 20,
        help="largest request body accepted; larger ones get 413 before they are read (default 4 MiB)",
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="requests allowed to wait; more are answered 429 (default 256)"
    )
    p.add_argument("--no-batching", action="store_true", help="serve one sequence at a time (same as --max-batch 1)")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="on SIGTERM or Ctrl-C, seconds in-flight requests get to finish before they are cancelled (default 10)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a client gets to send a request's headers, and again its body; slower ones are closed "
        "(a body: 408) so they cannot exhaust the server (default 30)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _check_listen(host: str, port: int) -> None:
    """Refuse an address this machine cannot listen on before anything starts (uvicorn would exit from
    inside the server, with the model half loaded)."""
    import socket

    from ..errors import OpenLLMError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise OpenLLMError(f"--host {host!r} is not an address of this machine: {exc}; e.g. 127.0.0.1") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OpenLLMError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --host or --port"
            ) from exc


def _exit_now_if_still_loading(code: int) -> None:
    """The model loads on a background thread; a process that ends while torch is inside that load aborts
    ("terminate called without an active exception", exit 134). Ending before it finishes (Ctrl-C while
    loading) therefore leaves at once, with output flushed."""
    import sys
    import threading

    if any(t.name == "openllm-load" and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from ..device import resolve_device
    from ..errors import OpenLLMError
    from ..serve import app_from_source, run_server

    if args.max_batch < 1 or args.max_queue < 1 or args.prefill_chunk < 1 or args.max_body_bytes < 1:
        raise OpenLLMError("--max-batch, --max-queue, --prefill-chunk and --max-body-bytes must be at least 1")
    if args.kv_cache_tokens is not None and args.kv_cache_tokens < 2 * args.max_batch:
        raise OpenLLMError(f"--kv-cache-tokens must be at least 2 x --max-batch ({2 * args.max_batch})")
    if not 0 < args.port < 65536:
        raise OpenLLMError(f"--port must be between 1 and 65535, got {args.port}")
    for flag, value in (("--shutdown-timeout", args.shutdown_timeout), ("--read-timeout", args.read_timeout)):
        if not (math.isfinite(value) and value >= 0 and (flag == "--shutdown-timeout" or value > 0)):
            raise OpenLLMError(f"{flag} must be a finite number of seconds (>= 0), got {value}")
    _check_listen(args.host, args.port)
    if str(args.model).startswith((".", "/", "~")) and not Path(args.model).expanduser().exists():
        raise OpenLLMError(
            f"no model at {args.model!r}: give a run folder, an export folder, or a hub reference OWNER/NAME@VERSION"
        )
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    api_key = args.api_key or os.environ.get("OPENLLM_API_KEY") or None
    base = f"http://{args.host}:{args.port}"

    def ready(state) -> None:
        if state.load_error:
            signal.raise_signal(signal.SIGTERM)  # a graceful stop of the server, then the error below
            return
        loaded, engine = app.state.loaded, state.engine
        print(
            f"ready: {state.model_name} ({loaded.kind}, context {loaded.model.cfg.max_seq_len}; "
            f"{engine.cache.slots} KV-cache slots of {engine.context} tokens, {engine.policy} batching)",
            flush=True,
        )

    app = app_from_source(
        args.model,
        device=device,
        hub=args.hub,
        model_name=args.model_name,
        api_key=api_key,
        max_batch=1 if args.no_batching else args.max_batch,
        kv_cache_tokens=args.kv_cache_tokens,
        prefill_chunk=args.prefill_chunk,
        max_queue=args.max_queue,
        batching=args.batching,
        prefix_caching=not args.no_prefix_caching,
        on_ready=ready,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.read_timeout,
    )
    print(f"loading {args.model}; serving on {base} (/health answers 200 once ready)", flush=True)
    print(f"OpenAI base URL: {base}/v1{'  (API key required)' if api_key else ''}", flush=True)
    signalled = run_server(
        app,
        args.host,
        args.port,
        log_level=args.log_level,
        shutdown_timeout=args.shutdown_timeout,
        header_timeout=args.read_timeout,
    )
    _exit_now_if_still_loading(0 if signalled else 1)
    if app.state.server.load_error:
        raise OpenLLMError(app.state.server.load_error)
    return 0
