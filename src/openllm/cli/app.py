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
        help="the only folder the app reads and writes (default: $OPENLLM_WORKSPACE, e.g. a mounted volume, "
        "else $OPENLLM_APP_WORKSPACE, else ./openllm-workspace)",
    )
    p.add_argument(
        "--mirror",
        default=None,
        metavar="OWNER/NAME",
        help="keep the workspace's runs, checkpoints and corpora in this dataset repository too (after each "
        "checkpoint and on stop), and restore them from it when the workspace is empty (default: "
        "$OPENLLM_WORKSPACE_REPO; on a Space without a volume, SPACE_ID-workspace; 'off': none)",
    )
    p.add_argument(
        "--mirror-hub",
        default=None,
        metavar="HUB",
        help="the hub of --mirror: 'local' (default, or $OPENLLM_WORKSPACE_HUB), 'hf', or a local hub's folder",
    )


def run(args: argparse.Namespace) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    from ..app import launch
    from ..app.storage import storage_config

    cfg = storage_config(args.workspace, repo=args.mirror, hub=args.mirror_hub)  # a bad --mirror: before anything
    mirrored = f", mirrored to {cfg.repo} on the {cfg.hub} hub" if cfg.repo else ""
    print(
        f"OpenLLM app on http://{args.host}:{args.port}  (workspace: {os.path.abspath(cfg.workspace)}{mirrored})",
        flush=True,
    )
    launch(args.workspace, host=args.host, port=args.port, mirror=args.mirror, mirror_hub=args.mirror_hub)
    return 0
