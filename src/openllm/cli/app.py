"""openllm app [--host 127.0.0.1] [--port 7860] [--workspace DIR]"""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--workspace",
        default=None,
        help="the only folder the app reads and writes (default: $OPENLLM_APP_WORKSPACE or ./openllm-workspace)",
    )


def run(args: argparse.Namespace) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    from ..app import launch
    from ..app.workspace import default_workspace

    ws = args.workspace or default_workspace()
    print(f"OpenLLM app on http://{args.host}:{args.port}  (workspace: {os.path.abspath(ws)})", flush=True)
    launch(ws, host=args.host, port=args.port)
    return 0
