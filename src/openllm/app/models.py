"""What the Models and Generate tabs do: list local runs and hub versions, resolve a model choice to something
``openllm.load`` takes (never a path outside the workspace), keep the last loaded model, stream generations,
push runs to a hub and download versions. No Gradio here."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OpenLLMError
from ..rundir import WEIGHTS, checkpoint_dir, checkpoint_steps, read_best, read_metrics
from .forms import FormError, PushRequest, SamplingRequest, parse_hub_ref
from .runner import run_status
from .workspace import Workspace, WorkspaceError, check_name

__all__ = [
    "RunInfo",
    "list_runs",
    "model_choices",
    "resolve_model",
    "ModelCache",
    "stream_completion",
    "hub_versions",
    "push_preview",
    "PushPreview",
    "push_run",
    "download_version",
    "hf_hub",
    "user_repo",
]


@dataclass
class RunInfo:
    name: str
    state: str
    step: int
    max_steps: int | None
    checkpoints: list[int]
    best_val_loss: float | None
    error: str | None
    warning: str | None = None


def list_runs(ws: Workspace) -> list[RunInfo]:
    infos = []
    for name in ws.run_names():
        st = run_status(ws, name)
        vals = [r["val_loss"] for r in read_metrics(ws.run_dir(name)) if isinstance(r.get("val_loss"), (int, float))]
        infos.append(
            RunInfo(
                name=name,
                state=st.state,
                step=st.step,
                max_steps=st.max_steps,
                checkpoints=checkpoint_steps(ws.run_dir(name)),
                best_val_loss=min(vals) if vals else None,
                error=st.error,
                warning=st.warning,
            )
        )
    return infos


def model_choices(ws: Workspace, hub_refs: list[str] | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs for the Generate tab: runs with a checkpoint, downloaded models, hub versions."""
    out: list[tuple[str, str]] = []
    for info in list_runs(ws):
        if info.checkpoints:
            out.append((f"run {info.name} (step {info.checkpoints[-1]:,})", f"run:{info.name}"))
    for name in ws.model_names():
        out.append((f"downloaded {name}", f"model:{name}"))
    for ref in hub_refs or []:
        out.append((f"hub {ref}", f"hub:{ref}"))
    return out


def resolve_model(ws: Workspace, choice: str) -> str:
    """What to pass to ``openllm.load`` for a Generate choice: a folder inside the workspace, or a hub reference.
    A typed ``owner/name@version`` is accepted as a hub reference; any other free text is refused."""
    choice = (choice or "").strip()
    if not choice:
        raise FormError("Model", "choose a model (train one first, or pick a hub version)")
    kind, _, rest = choice.partition(":")
    if kind in ("run", "model") and rest:
        try:
            name = check_name(rest, "model")
        except WorkspaceError as exc:
            raise FormError("Model", str(exc)) from exc
        folder = ws.run_dir(name) if kind == "run" else ws.models_dir / name
        if not folder.is_dir() or not ws.contains(folder):
            raise FormError("Model", f"{rest!r} is not in the workspace any more")
        if kind == "run" and not checkpoint_steps(folder):
            raise FormError("Model", f"run {name!r} has no checkpoint yet")
        return str(folder.resolve())
    ref = rest if kind == "hub" else choice
    repo, version = parse_hub_ref(ref, "Model")
    return f"{repo}@{version}"


class ModelCache:
    """Keeps the last loaded model; a run is reloaded when it has a newer checkpoint."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._loaded: Any = None
        self._lock = threading.Lock()

    def get(self, source: str, hub: Any = None):
        path = Path(source)
        stamp = tuple(checkpoint_steps(path)[-1:]) if path.is_dir() else ()
        key = (source, stamp)
        with self._lock:
            if self._key != key:
                from ..loading import load

                self._loaded = None  # free the old model first
                self._loaded = load(source, hub=hub)
                self._key = key
            return self._loaded


def stream_completion(loaded: Any, req: SamplingRequest) -> Iterator[str]:
    """The completion so far, growing piece by piece as tokens arrive."""
    from ..generate import stream_text

    if loaded.tokenizer is None:
        raise OpenLLMError("this model has no tokenizer.model; it cannot take text prompts")
    max_ctx = loaded.model.cfg.max_seq_len
    n_prompt = len(loaded.tokenizer.encode(req.prompt))
    if n_prompt >= max_ctx:
        raise FormError("Prompt", f"is {n_prompt} tokens; the model's context is {max_ctx} tokens")
    params = dataclasses.replace(req.params, max_new_tokens=min(req.params.max_new_tokens, max_ctx - n_prompt))
    text = ""
    for piece in stream_text(loaded.model, loaded.tokenizer, req.prompt, params):
        text += piece
        yield text


# --- hub -----------------------------------------------------------------------------------------------------
# The hub library (openllm.hub) does the work; these wrappers are the app's only contact with it. The hub is
# the local one unless OPENLLM_HUB / the hub library's defaults say otherwise; a token, where one is needed,
# comes from the environment inside the hub library and never passes through the app.


def hub_versions(repo: str | None = None) -> list[dict[str, Any]]:
    """[{repo, version, commit, date, step}] for the model versions on the hub (or of one repo), newest repo
    versions last."""
    from ..hub import list_models, model_versions

    repos = [repo] if repo else [r for r, _ in list_models()]
    out = []
    for r in repos:
        for v in model_versions(r):
            out.append({"repo": r, "version": v.name, "commit": v.commit, "date": v.date, "step": v.step})
    return out


@dataclass
class PushPreview:
    """Exactly what a push will publish: the run, the checkpoint, its val loss and its weights' checksum."""

    run: str
    step: int
    checkpoint: Path
    val_loss: float | None  # the in-training val loss estimate logged at that step, if one was
    sha256: str  # of the checkpoint's model.safetensors: what "the checkpoint changed since" is checked by
    best: bool  # the checkpoint with the best val loss estimate

    def describe(self) -> str:
        val = (
            f"val loss estimate {self.val_loss:.4f}"
            if self.val_loss is not None
            else "no val loss estimate at that step"
        )
        return (
            f"run {self.run}, checkpoint step {self.step:,}{' (best)' if self.best else ''}, {val}, "
            f"checkpoint file sha256 {self.sha256[:16]}… (our names; not the pushed model.safetensors, which "
            f"holds the same weights under transformers' names: its sha256 is shown after the push)"
        )


def workspace_run(ws: Workspace, run: str | None) -> tuple[str, Path]:
    """(name, folder) of a run the user picked, or a FormError: a bad name, or no such run in the workspace."""
    try:
        name = check_name(run or "", "Run")
    except WorkspaceError as exc:
        raise FormError("Run", str(exc)) from exc
    run_dir = ws.run_dir(name)
    if not run_dir.is_dir() or not ws.contains(run_dir):
        raise FormError("Run", f"{name!r} is not in the workspace")
    return name, run_dir


def push_preview(ws: Workspace, run: str, step: int | None = None) -> PushPreview:
    """What pushing run ``run`` at checkpoint ``step`` (default: its latest) publishes; refuses runs that are
    training or have no checkpoint."""
    run, run_dir = workspace_run(ws, run)
    st = run_status(ws, run)
    if st.active:
        raise FormError("Run", f"{run!r} is still training; stop it or wait until it finishes")
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise FormError("Run", f"{run!r} has no checkpoint to push")
    if step is None:
        step = steps[-1]
    if int(step) not in steps:
        raise FormError(
            "Checkpoint", f"run {run!r} has no checkpoint at step {step} (it has {', '.join(map(str, steps))})"
        )
    ckpt = checkpoint_dir(run_dir, int(step))
    vals = {
        int(r["step"]): float(r["val_loss"])
        for r in read_metrics(run_dir)
        if isinstance(r.get("val_loss"), (int, float))
    }
    from ..hashing import sha256_file

    best = read_best(run_dir) or {}
    return PushPreview(
        run=run,
        step=int(step),
        checkpoint=ckpt,
        val_loss=vals.get(int(step)),
        sha256=sha256_file(ckpt / WEIGHTS),
        best=best.get("step") == int(step),
    )


def push_run(
    ws: Workspace, req: PushRequest, step: int | None = None, expect_sha256: str | None = None, **publish: Any
) -> dict[str, Any]:
    """Push checkpoint ``step`` (default: the latest) of run ``req.run_name`` to ``req.repo`` as
    ``req.version``; returns {repo, version, commit, step, sha256}. With ``expect_sha256`` (what the preview
    showed), a checkpoint whose weights changed since is refused instead of published. ``publish``: more
    arguments of :func:`openllm.publish.push_model` (hub, license, datasets)."""
    preview = push_preview(ws, req.run_name, step)
    if expect_sha256 is not None and preview.sha256 != expect_sha256:
        raise FormError(
            "Push", "the checkpoint changed since it was shown; check what will be published and push again"
        )
    from ..hub import RevisionExists
    from ..publish import push_model

    try:
        # a checkpoint folder is pushed as it is: the version holds exactly these weights
        res = push_model(preview.checkpoint, repo_id=req.repo, version=req.version, **publish)
    except RevisionExists as exc:
        raise FormError(
            "Version",
            f"{req.repo} already has version {req.version}; versions are immutable: choose another version name",
        ) from exc
    return {
        "repo": res.repo_id,
        "version": res.version,
        "commit": res.commit,
        "step": res.step,
        # what the message after the push shows: the file a reader finds in the repo, not the checkpoint's
        "sha256": res.weights_sha256 or preview.sha256,
        "checkpoint_sha256": preview.sha256,
    }


def hf_hub(token: str | None = None) -> Any:
    """The Hugging Face hub a push from the app goes to: with ``token`` (the signed-in user's own, for this
    push only) when given, else with the HF_TOKEN secret (the hub adapter reads it; nobody signed in)."""
    from ..hub.hf import HfHub

    return HfHub(token=token) if token else HfHub()


def user_repo(repo: Any, username: str | None) -> str:
    """The repository a signed-in user publishes to: under their own namespace (``name`` alone becomes
    ``username/name``; another owner is refused). Nobody signed in: ``repo`` as given."""
    text = str(repo or "").strip()
    if not username:
        return text
    if text and "/" not in text:
        return f"{username}/{text}"
    owner = text.partition("/")[0]
    if owner and owner.lower() != username.lower():
        raise FormError(
            "Repository",
            f"signed in as {username}, you publish under your own namespace: {username}/{text.partition('/')[2]}",
        )
    return text


def download_version(ws: Workspace, ref: str) -> Path:
    """Download hub version ``owner/name@version`` into the workspace's models/ folder; returns that folder."""
    repo, version = parse_hub_ref(ref, "Download a version")
    name = check_name(f"{repo.replace('/', '--')}--{version}", "model")
    dest = ws.models_dir / name
    if dest.exists() and any(dest.iterdir()):
        raise FormError("Download a version", f"{repo}@{version} is already in the workspace (models/{name})")
    from ..hub import pull_model

    return Path(pull_model(f"{repo}@{version}", out=dest))
