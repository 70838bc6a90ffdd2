"""The Export tab: a run's latest checkpoint in another format, zipped for download."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .. import access
from .. import render as R
from .. import tools as T
from .shared import Shared

__all__ = ["build"]


def build(sh: Shared) -> list:
    with gr.Row():
        run = gr.Dropdown(
            sh.run_choices(),
            value=sh.default_run(),
            label="Run",
            elem_id="export-run",
            scale=3,
            min_width=260,
            info="its latest checkpoint",
        )
        fmt = gr.Dropdown(
            list(T.EXPORT_CHOICES),
            value="Hugging Face (safetensors)",
            label="Format",
            elem_id="export-format",
            scale=2,
            min_width=260,
        )
    btn = gr.Button("Export", variant="primary", elem_id="export-btn")
    msg = gr.HTML("", elem_id="export-msg")
    download = gr.DownloadButton("Download the export (zip)", elem_id="export-download", visible=False)

    archive_path = gr.State(None)

    def on_export(run_, fmt_):
        try:
            folder, archive = T.export_run(sh.ws, run_, fmt_)
        except Exception as exc:
            return R.err(exc), None
        done = f"Exported {run_} as {fmt_} to {sh.ws.relative(folder)} in the workspace."
        return R.msg(done, "ok"), str(archive)

    def offer_zip(archive):
        if archive and not sh.ws.downloads_dir.joinpath(Path(archive).name).is_file():
            raise gr.Error(f"the export's zip {Path(archive).name} is not in the workspace's downloads/ folder")
        return gr.update(value=archive, visible=bool(archive))

    # the message first, the download next: a zip the server cannot hand out fails the second step with an
    # error shown, never the whole export without a word
    btn.click(lambda: gr.update(visible=False), None, download).then(
        access.writer(on_export), [run, fmt], [msg, archive_path]
    ).then(offer_zip, archive_path, download)
    return [run]
