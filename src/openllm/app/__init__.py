"""The OpenLLM web app (Gradio): train, monitor, generate, fine-tune, chat, publish. ``openllm app`` and the
Space's app.py run it.

``build_app(workspace=...)`` returns the ``gr.Blocks``; ``launch(...)`` builds and serves it (bound to
127.0.0.1 unless told otherwise). Gradio is imported lazily, with its analytics off.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

__all__ = ["build_app", "launch"]


def build_app(workspace=None):
    """The app's ``gr.Blocks`` on ``workspace`` (default: OPENLLM_APP_WORKSPACE or ./openllm-workspace)."""
    from .ui import build_app as _build

    return _build(workspace)


def launch(workspace=None, *, host: str = "127.0.0.1", port: int = 7860, mirror=None, mirror_hub=None, **kwargs):
    """Build the app and serve it on ``host:port``; blocks until the server stops, unless
    ``prevent_thread_lock=True``. Returns the ``gr.Blocks`` (``.close()`` stops the server).

    The workspace is set up first (:func:`openllm.app.storage.open_storage`): restored from its mirror
    (``mirror`` on ``mirror_hub``, else OPENLLM_WORKSPACE_REPO / OPENLLM_WORKSPACE_HUB) when it is empty, then
    mirrored while the app serves and once more when it stops (SIGTERM included). Without blocking, the caller
    ends it: ``demo.openllm_storage.close()``."""
    from .storage import open_storage
    from .ui import CSS, THEME
    from .ui import build_app as _build
    from .zerogpu import prepare

    storage = open_storage(workspace, repo=mirror, hub=mirror_hub)
    prepare()  # on ZeroGPU: the GPU functions exist before the server starts
    demo = _build(storage.workspace.root)
    demo.openllm_storage = storage  # type: ignore[attr-defined]
    demo.queue(default_concurrency_limit=4)
    kwargs.setdefault("show_error", True)
    # Gradio hands out files only from the current folder, the temp folder and allowed_paths: the log, the
    # export zips and the config files are offered from the workspace's downloads/, wherever the workspace is
    # (only that folder: the rest of the workspace holds corpora and runs the server must not serve)
    downloads = str(demo.openllm_workspace.downloads_dir)  # type: ignore[attr-defined]
    kwargs["allowed_paths"] = [*(kwargs.get("allowed_paths") or []), downloads]
    if storage.mirror is not None:
        storage.mirror.start()
    blocking = not kwargs.get("prevent_thread_lock")
    if blocking and storage.mirror is not None:
        _term_is_interrupt()
    try:
        demo.launch(server_name=host, server_port=port, css=CSS, theme=THEME, share=False, **kwargs)
    except KeyboardInterrupt:
        # SIGTERM or Ctrl-C before Gradio's own wait loop (which takes them itself): the same clean stop
        if not blocking:
            raise
        demo.close()
    finally:
        if blocking:
            storage.close()
    return demo


def _term_is_interrupt() -> None:
    """SIGTERM (a Space stopping) ends the server as Ctrl-C does, so that the last mirror runs."""
    import signal
    import threading

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
