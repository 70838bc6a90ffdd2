"""What every tab shares: the workspace, the runner and the model cache (:class:`Shared`), and the pickers'
memory: a choice a user made is kept across tab switches, refreshes and reloads (in the browser's local storage,
under the picker's key), and only replaced when it no longer exists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ... import rundir
from ...rundir import checkpoint_steps, read_metrics
from .. import models as M
from ..runner import Runner
from ..workspace import Workspace

__all__ = ["Shared", "offer", "remember", "rememberer"]


@dataclass
class Shared:
    """The workspace, the runner and the model cache, plus the lists the pickers offer."""

    ws: Workspace
    runner: Runner
    cache: M.ModelCache = field(default_factory=M.ModelCache)

    def run_choices(self) -> list[str]:
        return self.ws.run_names()

    def default_run(self) -> str | None:
        active = self.runner.active()
        if active:
            return active[0]
        names = self.ws.run_names()
        return names[0] if names else None

    def keep_run(self, current: str | None) -> str | None:
        """The user's run while it exists, else the active or newest run."""
        return current if current and current in self.run_choices() else self.default_run()

    def hub_refs(self) -> list[str]:
        try:
            return [f"{v['repo']}@{v['version']}" for v in M.hub_versions()]
        except Exception:
            return []

    def gen_choices(self) -> list[tuple[str, str]]:
        return M.model_choices(self.ws, self.hub_refs())

    def checkpoint_choices(self, run: str | None) -> list[tuple[str, str]]:
        if not run or run not in self.run_choices():
            return []
        run_dir = self.ws.run_dir(run)
        vals = {
            int(r["step"]): r["val_loss"] for r in read_metrics(run_dir) if isinstance(r.get("val_loss"), (int, float))
        }
        best = (rundir.read_best(run_dir) or {}).get("step")
        out = []
        for s in reversed(checkpoint_steps(run_dir)):
            label = f"step {s:,}" + (f" · val {vals[s]:.3f}" if s in vals else "") + (" · best" if s == best else "")
            out.append((label, str(s)))
        return out


def offer(choices: list, current: Any, value: Any) -> dict:
    """A picker's update: new ``choices``; its value only when it must change (a value sent back unchanged
    would undo a choice the user makes while the refresh is on its way)."""
    if value == current:
        return gr.update(choices=choices)
    return gr.update(choices=choices, value=value)


def remember(picks: dict | None, key: str, value: Any) -> dict:
    """The pickers' memory with ``key`` now ``value``."""
    picks = dict(picks or {})
    picks[key] = value
    return picks


def rememberer(key: str) -> Callable[[dict | None, Any], dict]:
    """An event handler that remembers a picker's new value under ``key``."""

    def handler(picks, value):
        return remember(picks, key, value)

    return handler
