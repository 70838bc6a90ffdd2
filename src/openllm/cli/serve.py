"""openllm serve MODEL [--host 127.0.0.1] [--port 8000] [--api-key KEY]"""
from __future__ import annotations

import argparse
import os

from .common import add_device_option, add_hub_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run folder, an export folder, or OWNER/NAME@VERSION on the hub")
    add_hub_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(default: $OPENLLM_API_KEY; none: open)")
    p.add_argument("--model-name", default=None,
                   help="the model id /v1/models reports (default: the MODEL argument's last part)")
    add_device_option(p)
    p.add_argument("--max-batch", type=int, default=32, help="most sequences generated together (default 32)")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long the first request of a batch waits for others to join (default 10 ms)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests allowed to wait; more are answered 429 (default 256)")
    p.add_argument("--no-batching", action="store_true", help="serve one request at a time (same as --max-batch 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..errors import OpenLLMError
    from ..serve import app_from_source, run_server

    if args.max_batch < 1 or args.max_queue < 1:
        raise OpenLLMError("--max-batch and --max-queue must be at least 1")
    if not 0 < args.port < 65536:
        raise OpenLLMError(f"--port must be between 1 and 65535, got {args.port}")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    api_key = args.api_key or os.environ.get("OPENLLM_API_KEY") or None
    app = app_from_source(args.model, device=device, hub=args.hub, model_name=args.model_name, api_key=api_key,
                          max_batch=1 if args.no_batching else args.max_batch,
                          batch_window_ms=args.batch_window_ms, max_queue=args.max_queue)
    loaded = app.state.loaded
    base = f"http://{args.host}:{args.port}"
    print(f"serving {app.state.model_name} ({loaded.kind}, context {loaded.model.cfg.max_seq_len}) on {base}",
          flush=True)
    print(f"OpenAI base URL: {base}/v1{'  (API key required)' if api_key else ''}", flush=True)
    run_server(app, args.host, args.port, log_level=args.log_level)
    return 0
