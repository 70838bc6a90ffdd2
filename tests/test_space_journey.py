"""The built Space as Hugging Face runs it, end to end (issue 26's done-when).

`openllm space build` makes the Space; a fresh virtual environment is made from its requirements.txt alone
(nothing of this checkout's venv); `python app.py` starts in the Space's folder with what Hugging Face sets in a
Space whose README has ``hf_oauth: true`` (SPACE_ID, SYSTEM, OAUTH_*, OPENID_PROVIDER_URL), on loopback. Sign-in
goes through Gradio's own OAuth routes to an OpenID provider on loopback shaped like huggingface.co's
(tests/oidc_provider.py): the browser clicks "Sign in with Hugging Face", sees the consent page, authorizes,
and is back signed in as the Space's owner.

Then, in Chromium: a visitor sees no write control; the owner trains, watches, stops, continues, chats and
publishes. Then the restart with an empty disk: a second run is training when the machine dies (kill -9 of the
app and its job), the whole workspace is deleted, the app starts again: both runs, their curves and checkpoints
are back from the workspace mirror (the default on a Space without a volume), the owner is still signed in, and
Continue gives exactly the losses of an uninterrupted run.

No request leaves loopback: the app's process has its proxy pointed at a recorder that refuses everything, and
the browser's requests to other hosts are aborted and recorded. The only ones are Gradio's own Space header
(shown when a Space is opened outside huggingface.co's page: the Space's info and two Google Fonts).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from oidc_provider import OIDCProvider
from test_app_browser import (
    CHROMIUM,
    _continue,
    _corpus,
    _fill,
    _free_port,
    _monitor,
    _need_browser,
    _plot_src,
    _select,
    _wait_text,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting.*:Warning"),
]

OWNER = "alice"
SPACE_ID = f"{OWNER}/openllm"
CLIENT_ID, CLIENT_SECRET = "space-client-id", "space-client-secret"
# Gradio's header for a Space opened outside huggingface.co's page fetches these; the app itself fetches nothing
GRADIO_SPACE_HEADER = {("huggingface.co", f"/api/spaces/{SPACE_ID}"), ("fonts.googleapis.com", "/css2")}


class RefusingProxy:
    """What the app's process would reach beyond loopback: every connection is recorded and closed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(512).split(b"\r\n")[0].decode(errors="replace"))
                except OSError:
                    self.seen.append("(nothing sent)")

    def close(self) -> None:
        self._sock.close()


def _space_env(python: Path, op: OIDCProvider, port: int, hub: Path, proxy: RefusingProxy, scopes: str) -> dict:
    from openllm.space.validate import _clean_env

    return _clean_env(
        {
            # what Hugging Face sets in a Space whose README enables OAuth
            "SPACE_ID": SPACE_ID,
            "SPACE_AUTHOR_NAME": OWNER,
            "SYSTEM": "spaces",
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
            "OAUTH_SCOPES": scopes,
            "OPENID_PROVIDER_URL": op.url,
            # loopback here (a Space listens on 0.0.0.0:7860)
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            # the local hub (the mirror's default and where the owner publishes) lives beside the Space's disk
            "OPENLLM_HUB": str(hub),
            "HF_HUB_OFFLINE": "1",
            "HTTP_PROXY": proxy.url,
            "HTTPS_PROXY": proxy.url,
            "ALL_PROXY": proxy.url,
            "NO_PROXY": "localhost,127.0.0.1",
        },
        venv=python.parent.parent,
    )


def _start(python: Path, space: Path, env: dict, log: Path) -> subprocess.Popen:
    import httpx

    # a session of its own: killing the group is the machine going away (the app and whatever it started)
    proc = subprocess.Popen(
        [str(python), "app.py"], cwd=space, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=5, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"the Space did not answer in 240 s:\n{log.read_text()[-3000:]}")


def _sign_in(page, base: str, op: OIDCProvider) -> None:
    """Click "Sign in with Hugging Face", authorize on the provider's consent page, land back signed in.

    Gradio's page reloads itself when its event stream has been down for 2 s (its "connection lost" handler):
    when the redirect to the provider takes longer than that (a loaded machine), that reload cancels it, and the
    page is back, signed out, as a user would see it; they click again, and so does this test (three times)."""
    for _ in range(3):
        page.wait_for_selector("#login-btn")
        assert page.locator("#login-btn").inner_text().strip() == "Sign in with Hugging Face"
        page.click("#login-btn")
        try:
            page.wait_for_url(f"{op.url}/oauth/authorize**", timeout=30_000)
            break
        except Exception:
            time.sleep(2)
    page.wait_for_selector("#authorize")
    assert "write-repos" in page.inner_text("body")  # the consent page names what the Space asks for
    page.click("#authorize")
    page.wait_for_url(base, timeout=60_000)
    _wait_text(page, "#login-btn", f"Logout ({OWNER})", 60)


def _runs_row(page, name: str) -> str:
    """The Models tab's row of run ``name``: its cells (name, state, step / total, checkpoints, best val), one
    per line."""
    page.get_by_role("tab", name="Models").click()
    page.click("#models-refresh")
    deadline, text = time.time() + 30, ""
    while time.time() < deadline:
        text = page.locator("#runs-table").inner_text()
        cells = [c.strip() for c in text.splitlines() if c.strip()]
        if name in cells:
            i = cells.index(name)
            return "\n".join(cells[i : i + 5])
        time.sleep(0.5)
    raise AssertionError(f"no row of {name}: {text}")


def test_the_built_space_signed_in_owner_journey_and_restart_on_an_empty_disk(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    from openllm import rundir
    from openllm.app.runner import child_env
    from openllm.hub import LocalHub, model_versions
    from openllm.space.validate import ensure_venv

    # --- build the Space and its environment, from its own requirements.txt only ---------------------------------
    space = tmp_path / "space"
    run_cli("space", "build", "--out", str(space), cwd=REPO)
    front = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert front["hf_oauth"] is True
    scopes = " ".join(["openid", "profile", *front["hf_oauth_scopes"]])  # what Hugging Face gives OAUTH_SCOPES
    os.environ.setdefault("OPENLLM_SPACE_INDEXES", "local")  # PyTorch's CPU index is not reachable here
    python = ensure_venv(space / "requirements.txt", cache=tmp_path / "venvs")
    hub_dir, log = tmp_path / "hub", tmp_path / "app.log"
    ws = space / "openllm-workspace"  # a Space without a volume: the app's default, on the disk a restart wipes
    corpus = _corpus(tmp_path / "psalms_and_more.txt")
    port = _free_port()
    base = f"http://localhost:{port}/"
    proxy = RefusingProxy()
    outside: list[tuple[str, str]] = []

    def only_loopback(route) -> None:
        u = urllib.parse.urlsplit(route.request.url)
        if u.hostname in ("localhost", "127.0.0.1"):
            try:
                route.continue_()
            except Exception:  # the page went away meanwhile (a navigation, the browser closing)
                pass
        else:
            outside.append((u.hostname or "", u.path))
            route.abort()

    with OIDCProvider(user=OWNER, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as op:
        env = _space_env(python, op, port, hub_dir, proxy, scopes)
        app = _start(python, space, env, log)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
                )
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                context.route("**/*", only_loopback)
                page = context.new_page()
                page.set_default_timeout(30_000)
                page.goto(base)
                page.wait_for_selector("#login-btn")
                time.sleep(2)

                # --- a visitor: no write control ---------------------------------------------------------------
                assert not page.locator("#start-btn").is_visible()
                assert not page.locator("#continue-btn").is_visible()

                # --- the owner signs in with Hugging Face ------------------------------------------------------
                _sign_in(page, base, op)
                assert op.authorized_scopes[-1] == scopes and not op.errors
                page.wait_for_selector("#start-btn", state="visible")

                # --- train: a tiny run on an uploaded corpus ----------------------------------------------------
                _fill(page, "run-name", "e2e")
                _fill(page, "vocab-size", 400)
                _fill(page, "batch-size", 2)
                page.click("#advanced")
                _fill(page, "eval-every", 3)
                _fill(page, "steps", 2000)  # more than it can run before Stop
                _fill(page, "warmup", 2)
                _fill(page, "save-every", 1000)
                page.get_by_text("An uploaded file").click()
                page.locator("#corpus-upload input[type=file]").set_input_files(str(corpus))
                _wait_text(page, "#corpus-check", "ready to train", 60)
                page.click("#start-btn")
                _wait_text(page, "#monitor-banner", "Started run 'e2e'", 30)

                # --- watch: the step rises and the loss plot is redrawn -----------------------------------------
                deadline, first = time.time() + 180, None
                while time.time() < deadline:
                    m, src = _monitor(page), _plot_src(page)
                    if first is None and m["step"] >= 1 and m["points"] > 0:
                        first = (m["step"], src)
                    if first and m["step"] >= first[0] + 2 and src and src != first[1]:
                        break
                    time.sleep(1)
                else:
                    raise AssertionError(f"no progress: {page.locator('#monitor-html').inner_text()}")

                # --- stop: graceful, with a checkpoint ----------------------------------------------------------
                page.get_by_role("tab", name="Train").click()
                page.wait_for_function("!document.querySelector('#stop-btn').disabled", timeout=20_000)
                page.click("#stop-btn")
                page.get_by_role("tab", name="Monitor").click()
                page.wait_for_selector("#monitor-view[data-state=stopped]", timeout=120_000)
                stopped = _monitor(page)["step"]
                assert f"step {stopped}" in page.locator("#stat-ckpt").inner_text()

                # --- continue: three more steps from the checkpoint ---------------------------------------------
                _continue(page, "e2e", 3, f"to a new total of {stopped + 3} steps", refresh=True)
                assert _monitor(page)["step"] == stopped + 3

                # --- chat with it (a base model: it continues the text) -----------------------------------------
                page.get_by_role("tab", name="Chat").click()
                page.click("#chat-refresh")
                time.sleep(1)
                _select(page, "chat-model", "e2e")
                page.locator("#chat-advanced").get_by_text("Sampling, and what the model sees").click()
                _fill(page, "chat-max-new", 8)
                _fill(page, "chat-input", "Who made the heavens?")
                page.click("#chat-send")
                _wait_text(page, "#chat-msg", "The reply", 120)
                assert page.locator("#chat-box [data-testid=bot]").count() == 1

                # --- publish it: the owner pushes a version to the hub ------------------------------------------
                page.get_by_role("tab", name="Models").click()
                _select(page, "push-run", "e2e")
                assert page.locator("#push-target").is_visible()  # signed in: Hugging Face is offered too
                _fill(page, "push-repo", f"{OWNER}/tiny-journey")
                _fill(page, "push-version", "v1")
                page.click("#push-btn")
                _wait_text(page, "#push-msg", f"Pushed 'e2e' checkpoint step {stopped + 3}", 120)
                assert [v.name for v in model_versions(f"{OWNER}/tiny-journey", hub=LocalHub(hub_dir))] == ["v1"]

                # --- a second run is training when the machine goes away ----------------------------------------
                total = 12
                page.get_by_role("tab", name="Train").click()
                _fill(page, "run-name", "r2")
                _fill(page, "steps", total)
                _fill(page, "save-every", 4)
                page.click("#start-btn")
                _wait_text(page, "#monitor-banner", "Started run 'r2'", 30)
                run = ws / "runs" / "r2"
                mirror = LocalHub(hub_dir)
                deadline = time.time() + 240
                while rundir.latest_checkpoint(run) is None:
                    assert time.time() < deadline, "no checkpoint of r2"
                    time.sleep(0.02)
                job = rundir.lock_holder(run)["pid"]
                os.kill(job, signal.SIGSTOP)  # frozen: the checkpoint it wrote is the last one
                saved = rundir.checkpoint_steps(run)[-1]
                assert saved < total
                want = f"runs/r2/checkpoints/{rundir.step_name(saved)}/state.json"
                while want not in mirror.list_files(repo_id=f"{SPACE_ID}-workspace", repo_type="dataset"):
                    assert time.time() < deadline, "the checkpoint never reached the mirror"
                    time.sleep(0.2)
                os.killpg(app.pid, signal.SIGKILL)  # the machine goes: the app and its job, -9, nothing recorded
                os.kill(job, signal.SIGKILL)
                app.wait(30)
                assert rundir.read_status(run)["state"] == "training"
                shutil.rmtree(ws)  # a new machine: the Space's disk is empty

                # --- the app starts again: everything is back; the owner is still signed in ---------------------
                app = _start(python, space, env, log)
                page.goto(base)
                _wait_text(page, "#login-btn", f"Logout ({OWNER})", 60)  # the session cookie outlives a restart
                row = _runs_row(page, "e2e")
                assert "finished" in row and str(stopped + 3) in row
                row = _runs_row(page, "r2")
                assert "stopped" in row and str(saved) in row
                page.get_by_role("tab", name="Monitor").click()
                _select(page, "monitor-run", "r2")
                page.wait_for_selector("#monitor-view[data-state=stopped]", timeout=30_000)
                assert _monitor(page)["points"] >= saved and _plot_src(page)  # the curve came back
                assert rundir.checkpoint_steps(run)[-1] == saved
                _continue(page, "r2", total - saved, f"to a new total of {total} steps")
                browser.close()
            assert not op.errors, op.errors
        finally:
            app.send_signal(signal.SIGTERM)  # a Space stopping: one last mirror, then a clean exit
            try:
                app.wait(120)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(app.pid, signal.SIGKILL)
                proxy.close()
    assert app.returncode == 0, log.read_text()[-3000:]
    # no exception of the app's own code reached the log (Gradio's and uvicorn's own reports, e.g. of a stale page
    # asking the restarted server for a file of the old one, are theirs)
    blocks = log.read_text().split("Traceback (most recent call last):")[1:]
    ours = [b for b in blocks if any(f.startswith(f"{space}/") for f in re.findall(r'File "([^"]+)"', b))]
    assert ours == [], ours[0][:3000] if ours else ""

    # the uninterrupted run: what the job trains, on the same prepared data, in one process
    jobdir = ws / "jobs" / "r2"
    ref = tmp_path / "uninterrupted"
    subprocess.run(
        [sys.executable, "-m", "openllm", "train", "--config", str(jobdir / "config.json"), "--data",
         str(jobdir / "data" / "tokens"), "--out", str(ref), "--no-progress"],
        check=True, env=child_env(), capture_output=True, timeout=300,
    )  # fmt: skip
    losses = [{r["step"]: r["loss"] for r in rundir.read_metrics(d)} for d in (run, ref)]
    assert sorted(losses[0]) == list(range(1, total + 1))
    assert losses[0] == losses[1]
    assert proxy.seen == [], f"the Space's process reached for the network: {proxy.seen}"
    unexpected = [
        (h, path) for h, path in outside if not any(h == a and path.startswith(b) for a, b in GRADIO_SPACE_HEADER)
    ]
    assert unexpected == [], f"the page reached beyond loopback: {unexpected}"
