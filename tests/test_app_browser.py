"""The web app end to end in a real browser (Playwright driving Debian's Chromium).

Open the app, check that bad fields are refused, start a tiny training on an uploaded corpus, watch the
progress rise and the loss plot update, refuse a second Start, stop it, see the checkpoint listed, generate
text from it, push it to the local hub and see the version. Then the journeys around a run's identity and
lifetime: push a run that is not the newest and get its weights, a run resumed from the command line shown
live and stopped from the app, corpora that would fail refused before starting, a diverged run marked. And
a finished run fine-tuned from the Models tab (a bad conversation upload refused first), then chatted with in
the Chat tab.

Screenshots of every tab at 1280x800 and 390x844 go to artifacts/screenshots/ (gitignored), or to the folder
named by OPENLLM_SCREENSHOTS (``OPENLLM_SCREENSHOTS=docs/img`` refreshes the ones docs/app.md shows).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openllm.app.runner import child_env

REPO = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("OPENLLM_SCREENSHOTS") or REPO / "artifacts" / "screenshots")
if not SHOTS.is_absolute():
    SHOTS = REPO / SHOTS
TABS = ["Train", "Monitor", "Generate", "Chat", "Models", "Evaluate", "Export", "Compare", "Help"]
CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    # gradio's queue calls pandas APIs that pandas 3 deprecates: noise, not ours
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting.*:Warning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning"),
]


def _need_browser():
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        msg = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)  # CI installs both: their absence there is a broken setup, not a reason to skip
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus(path: Path, chapters: int = 60) -> Path:
    """A small slice of the embedded corpus (real English prose) as a plain text file."""
    from openllm.corpus import embedded_corpus_documents

    docs = []
    for doc in embedded_corpus_documents():
        docs.append(doc)
        if len(docs) >= chapters:
            break
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def _home_workspace() -> Path:
    """A workspace outside the current folder and the temp folder, the two Gradio serves files from unasked (a
    user's ``--workspace ~/llm``): under $HOME, else skipped."""
    import tempfile

    home = Path.home().resolve()
    cwd, tmp = Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()
    if not home.is_dir() or any(home == d or d in home.parents for d in (cwd, tmp)):
        pytest.skip(f"no folder outside {cwd} and {tmp} to put the workspace in ($HOME is {home})")
    return Path(tempfile.mkdtemp(prefix=".openllm-test-ws-", dir=home)) / "workspace"


@pytest.fixture(params=["tmp"])
def app_server(request, tmp_path):
    """The app on a workspace under the temp folder; parametrized indirectly with "home", one under $HOME."""
    _need_browser()
    from openllm.app import launch

    ws = tmp_path / "workspace" if request.param == "tmp" else _home_workspace()
    port = _free_port()
    demo = launch(ws, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/", ws
    finally:
        runner = demo.openllm_runner
        if runner.active():
            runner.stop()
            if not runner.wait(60) and runner._proc is not None:
                runner._proc.kill()
        demo.close()
        if request.param != "tmp":
            shutil.rmtree(ws.parent, ignore_errors=True)


def _select(page, elem_id: str, option_text: str) -> None:
    """Pick the option of a Gradio dropdown whose label contains ``option_text``."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option").filter(has_text=option_text).first.click()


def _fill(page, elem_id: str, value) -> None:
    if " " in elem_id:  # an explicit selector inside the element
        box = page.locator(f"#{elem_id}").first
    else:
        box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.blur()


def _wait_text(page, selector: str, text: str, timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        last = page.locator(selector).first.inner_text()
        if text in last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{selector} never showed {text!r}; it shows {last!r}")


def _continue(page, run: str, more: int, banner: str, *, refresh: bool = False) -> None:
    """Continue ``run`` for ``more`` steps from the Models tab, wait for the Monitor's ``banner`` and for the run
    to finish. ``refresh``: the Models tab's lists first (a run that stopped since they were drawn)."""
    page.get_by_role("tab", name="Models").click()
    time.sleep(1)
    if refresh:
        page.click("#models-refresh")
    _select(page, "push-run", run)
    _fill(page, "continue-steps", more)
    page.wait_for_function("!document.querySelector('#continue-btn').disabled", timeout=20_000)
    page.click("#continue-btn")
    _wait_text(page, "#monitor-banner", banner, 30)
    page.wait_for_selector("#monitor-view[data-state=finished]", timeout=300_000)


def _monitor(page) -> dict:
    view = page.locator("#monitor-view")
    if view.count() == 0:
        return {"step": -1, "state": "", "points": 0}
    return {
        "step": int(view.get_attribute("data-step") or -1),
        "state": view.get_attribute("data-state") or "",
        "points": int(view.get_attribute("data-points") or 0),
    }


def _plot_src(page) -> str:
    img = page.locator("#loss-plot img")
    return img.first.get_attribute("src") or "" if img.count() else ""


def _shot(page, name: str) -> None:
    out = REPO / "artifacts" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    time.sleep(0.5)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def _tab_shots(page, label: str) -> None:
    """Every tab, reached by clicking its button (so a tab hidden at this width fails the test), saved to
    SHOTS/app-TAB-LABEL.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for tab in TABS:
        button = page.get_by_role("tab", name=tab)
        button.scroll_into_view_if_needed()
        assert button.is_visible(), f"the {tab} tab cannot be reached at {label}"
        button.click()
        time.sleep(1.5)
        page.screenshot(path=str(SHOTS / f"app-{tab.lower()}-{label}.png"), full_page=False)


def test_train_watch_stop_generate_push_in_a_browser(app_server, tmp_path):
    from playwright.sync_api import sync_playwright

    demo, url, ws = app_server
    corpus = _corpus(tmp_path / "psalms_and_more.txt")
    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("#start-btn")
        time.sleep(1)

        # --- the form refuses bad values, naming the field -----------------------------------------------------
        _fill(page, "lr", 0)
        page.click("#start-btn")
        _wait_text(page, "#train-msg", "Learning rate: must be greater than 0", 20)
        _fill(page, "lr", 0.003)
        page.click("#advanced")  # the settings beyond the basic ones
        _fill(page, "steps", 10.5)
        page.click("#start-btn")
        _wait_text(page, "#train-msg", "Steps: must be a whole number", 20)
        page.get_by_text("A file or folder in the workspace").click()
        _fill(page, "corpus-path", "../../etc/passwd")
        _fill(page, "steps", 2000)  # more than it can run before Stop, however fast the machine
        _fill(page, "warmup", 2)
        page.click("#start-btn")
        _wait_text(page, "#train-msg", "outside the app's workspace", 20)
        assert not any(ws.joinpath("runs").iterdir()), "a refused form must not create a run"

        # --- a tiny run on an uploaded corpus ------------------------------------------------------------------
        _fill(page, "run-name", "e2e")
        _fill(page, "vocab-size", 400)
        _fill(page, "batch-size", 2)
        _fill(page, "eval-every", 3)
        _fill(page, "save-every", 1000)
        page.get_by_text("An uploaded file").click()
        page.locator("#corpus-upload input[type=file]").set_input_files(str(corpus))
        page.wait_for_function(
            "document.querySelector('#corpus-upload') && "
            "document.querySelector('#corpus-upload').innerText.includes('psalms_and_more')"
        )
        _wait_text(page, "#corpus-check", "ready to train", 60)
        page.click("#start-btn")
        # the app follows the new run in the Monitor tab, with the message in view
        _wait_text(page, "#monitor-banner", "Started run 'e2e'", 30)
        page.wait_for_function("document.querySelector('#start-btn').disabled", timeout=20_000)  # no second Start

        # --- Monitor: progress rises, the plot updates ---------------------------------------------------------
        deadline = time.time() + 150
        first_src, first_step = "", -1
        while time.time() < deadline:
            m = _monitor(page)
            assert m["state"] in ("queued", "preparing", "training", ""), (
                f"the run ended early: {page.locator('#monitor-html').inner_text()}"
            )
            src = _plot_src(page)
            if m["step"] >= 1 and m["points"] > 0 and not first_src:
                first_src, first_step = src, m["step"]
            if first_src and m["step"] >= first_step + 2 and src and src != first_src:
                break
            time.sleep(1)
        else:
            raise AssertionError(
                f"no progress: {page.locator('#monitor-html').inner_text()}\n"
                f"{page.locator('#log-tail textarea').input_value()}"
            )
        assert "tokens / s" in page.locator("#monitor-html").inner_text().lower()
        assert "ram" in page.locator("#stat-mem").inner_text().lower()
        log = page.locator("#log-tail textarea").input_value()
        assert "train" in log
        _shot(page, "2-monitor-running")

        # --- Stop: graceful, with a checkpoint -----------------------------------------------------------------
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function("!document.querySelector('#stop-btn').disabled", timeout=20_000)
        page.click("#stop-btn")
        _wait_text(page, "#train-msg", "Stopping 'e2e'", 20)
        page.get_by_role("tab", name="Monitor").click()
        deadline = time.time() + 90
        while time.time() < deadline and _monitor(page)["state"] != "stopped":
            time.sleep(1)
        assert _monitor(page)["state"] == "stopped", page.locator("#monitor-html").inner_text()
        stopped_at = _monitor(page)["step"]
        ckpt_text = page.locator("#stat-ckpt").inner_text()
        assert f"step {stopped_at}" in ckpt_text, ckpt_text
        _shot(page, "3-monitor-stopped")

        # --- Models: the run and its checkpoint are listed -----------------------------------------------------
        page.get_by_role("tab", name="Models").click()
        page.click("#models-refresh")
        _wait_text(page, "#runs-table", "stopped", 20)
        row = _wait_text(page, "#runs-table", "e2e", 5)
        assert str(stopped_at) in row

        # --- Generate from the stopped run's checkpoint (streamed) ----------------------------------------------
        page.get_by_role("tab", name="Generate").click()
        page.click("#gen-refresh")
        time.sleep(1)
        _select(page, "gen-model", "run e2e")
        _fill(page, "gen-prompt", "And God said")
        _fill(page, "gen-max-new", 24)
        _fill(page, "gen-seed", 1)
        page.click("#gen-btn")
        _wait_text(page, "#gen-msg", "Done", 90)
        out = page.locator("#gen-output textarea").input_value()
        assert out.strip(), "no generated text"
        _shot(page, "4-generate")

        # --- push to the local hub and see the version ---------------------------------------------------------
        page.get_by_role("tab", name="Models").click()
        _select(page, "push-run", "e2e")
        _fill(page, "push-repo", "tester/tiny-e2e")
        _fill(page, "push-version", "v1")
        page.click("#push-btn")
        _wait_text(page, "#push-preview", f"checkpoint step {stopped_at}", 20)
        _wait_text(page, "#push-msg", f"Pushed 'e2e' checkpoint step {stopped_at}", 120)
        assert "to tester/tiny-e2e@v1" in page.locator("#push-msg").inner_text()
        _wait_text(page, "#hub-table", "tester/tiny-e2e", 20)
        assert "v1" in page.locator("#hub-table").inner_text()
        page.click("#push-btn")  # versions are immutable
        _wait_text(page, "#push-msg", "immutable", 60)
        _fill(page, "dl-ref", "tester/tiny-e2e@v1")
        page.click("#dl-btn")
        _wait_text(page, "#dl-msg", "Downloaded tester/tiny-e2e@v1 to models/", 60)
        _shot(page, "5-models")

        # --- ... and generate from the hub version -------------------------------------------------------------
        page.get_by_role("tab", name="Generate").click()
        time.sleep(1)
        _select(page, "gen-model", "hub tester/tiny-e2e@v1")
        _fill(page, "gen-temp input[type=number]", 0)  # greedy
        page.click("#gen-btn")
        _wait_text(page, "#gen-msg", "Done: tester/tiny-e2e@v1", 90)
        # a model stopped after a few steps may greedily repeat its space piece: text, not its content, is checked
        assert page.locator("#gen-output textarea").input_value() != ""

        # --- Continue the stopped run for more steps: the new total is shown, it trains to it ------------------
        _continue(page, "e2e", 3, f"from step {stopped_at} to a new total of {stopped_at + 3} steps")
        assert _monitor(page)["step"] == stopped_at + 3

        # --- Help comes from docs/app.md -----------------------------------------------------------------------
        page.get_by_role("tab", name="Help").click()
        _wait_text(page, "#help-text", "The workspace", 10)
        _shot(page, "6-help")
        browser.close()

    # the hub really holds it; nothing was written outside the workspace except the hub itself
    from openllm.hub import model_versions

    assert [v.name for v in model_versions("tester/tiny-e2e")] == ["v1"]
    assert (ws / "models" / "tester--tiny-e2e--v1" / "config.json").is_file()
    assert (ws / "corpora" / "uploads").is_dir() and any((ws / "corpora" / "uploads").iterdir())
    print(f"browser test took {time.time() - t0:.0f} s; screenshots in {SHOTS}")
    shutil.rmtree(ws / "jobs" / "e2e" / "data", ignore_errors=True)


def _weights_digest(source) -> str:
    """sha256 over a model's tensors (names sorted), whatever folder format holds them."""
    import hashlib

    from openllm import load

    model = load(str(source), device="cpu").model
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_run_identity_cli_runs_corpus_checks_and_divergence_in_a_browser(app_server, tmp_path):
    from playwright.sync_api import sync_playwright

    from openllm.app.forms import CORPUS_WORKSPACE, parse_train_form, preset_fields
    from openllm.hub import pull_model

    demo, url, ws = app_server
    runner = demo.openllm_runner
    _corpus(ws / "corpora" / "bible.txt", chapters=60)

    def train(name, **over):
        values = {
            **preset_fields("tiny"),
            "preset": "tiny",
            "run_name": name,
            "corpus_kind": CORPUS_WORKSPACE,
            "corpus_path": "corpora/bible.txt",
            "upload": None,
            "vocab_size": 400,
            "max_steps": 12,
            "batch_size": 2,
            "warmup_steps": 1,
            "eval_every": 4,
            "save_every": 1000,
            **over,
        }
        runner.start(parse_train_form(values))
        assert runner.wait(400), f"{name} did not end"
        time.sleep(1.1)  # the next run is newer by its folder's time

    train("run-1")
    train("run-2", lr=0.001)  # same data and seed: another learning rate makes other weights
    # the diverging settings, with the classic recipe's AdamW on every matrix (Muon's bounded updates at its
    # own rate keep the default recipe from diverging at lr 1)
    train("wild", recipe="classic", optimizer="adamw", lr=1.0, grad_clip=0, warmup_steps=0, max_steps=30)
    assert [runner.status(n).state for n in ("run-1", "run-2")] == ["finished", "finished"]
    assert ws.joinpath("runs").exists() and runner.ws.run_names()[1] == "run-2"

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("#start-btn")
        time.sleep(1)

        # --- a diverged run is marked diverged, with what to change ---------------------------------------------
        page.get_by_role("tab", name="Monitor").click()
        _select(page, "monitor-run", "wild")
        page.wait_for_selector("#run-state[data-state=diverged]", timeout=20_000)
        assert "lower the learning rate" in page.locator("#run-warning").inner_text()

        # --- run identity: pick run-1 while run-2 is newer; the choice survives tabs and a reload -------------
        page.get_by_role("tab", name="Models").click()
        _select(page, "push-run", "run-1")
        _wait_text(page, "#push-preview", "run run-1, checkpoint step 12", 20)
        page.get_by_role("tab", name="Generate").click()
        time.sleep(1)
        page.get_by_role("tab", name="Models").click()
        time.sleep(2)
        assert page.locator("#push-run input").input_value() == "run-1"
        page.reload()
        page.wait_for_selector("#start-btn")
        page.get_by_role("tab", name="Models").click()
        time.sleep(2)
        assert page.locator("#push-run input").input_value() == "run-1"
        shown = page.locator("#push-what").get_attribute("data-sha256")
        _fill(page, "push-repo", "tester/pick")
        _fill(page, "push-version", "v1")
        page.click("#push-btn")
        _wait_text(page, "#push-msg", "Pushed 'run-1' checkpoint step 12", 120)
        assert page.locator("#push-run input").input_value() == "run-1"

        # --- a resume started from the command line: shown live, Start refused, stopped from the app ---------
        run2_digest = _weights_digest(ws / "runs" / "run-2" / "checkpoints" / "step_00000012")
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openllm",
                "train",
                "--out",
                str(ws / "runs" / "run-2"),
                "--max-steps",
                "2000",
                "--no-progress",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(),
        )
        try:
            page.get_by_role("tab", name="Monitor").click()
            _select(page, "monitor-run", "run-2")
            page.wait_for_selector("#monitor-view[data-external=true][data-state=training]", timeout=120_000)
            # stop once it trains (past its checkpoint at step 12), so that the stop is the trainer's graceful one
            page.wait_for_function("Number(document.querySelector('#monitor-view').dataset.step) > 13", timeout=120_000)
            assert f"PID {cli.pid}" in page.locator("#run-holder").inner_text()
            assert "started outside the app" in page.locator("#log-tail textarea").input_value()
            page.wait_for_function("document.querySelector('#start-btn').disabled", timeout=20_000)
            page.wait_for_function("!document.querySelector('#monitor-stop').disabled", timeout=20_000)
            page.click("#monitor-stop")
            _wait_text(page, "#monitor-banner", "Stopping 'run-2'", 20)
            page.wait_for_selector("#monitor-view[data-state=stopped]", timeout=120_000)
            assert cli.wait(60) == 0
        finally:
            cli.kill()
        page.wait_for_function("!document.querySelector('#start-btn').disabled", timeout=20_000)

        # --- corpora that would fail are refused before anything starts -------------------------------------
        page.get_by_role("tab", name="Train").click()
        (ws / "corpora" / "empty.txt").write_text("")
        page.get_by_text("A file or folder in the workspace").click()
        _fill(page, "corpus-path", "corpora/empty.txt")
        _wait_text(page, "#corpus-check", "the corpus is empty", 30)
        _fill(page, "run-name", "nope")
        page.click("#start-btn")
        _wait_text(page, "#train-msg", "Corpus: the corpus is empty", 30)
        records = tmp_path / "records.jsonl"
        records.write_text(
            "".join(
                json.dumps(
                    {
                        "id": str(i),
                        "body": f"Record {i} holds a sentence long enough to be kept when the corpus is cleaned.",
                    }
                )
                + "\n"
                for i in range(40)
            )
        )
        page.get_by_text("An uploaded file").click()
        page.locator("#corpus-upload input[type=file]").set_input_files(str(records))
        _wait_text(page, "#corpus-check", "no text field 'text'", 60)
        page.click("#start-btn")
        _wait_text(page, "#train-msg", "no text field 'text'", 30)
        assert "--" not in page.locator("#train-msg").inner_text()  # the app's words, not the CLI's
        assert not (ws / "runs" / "nope").exists()
        _select(page, "text-field", "body")
        _wait_text(page, "#corpus-check", "ready to train", 60)
        assert "Record 0 holds" in page.locator("#corpus-check").inner_text()

        # --- Evaluate (saved with the run), Export (a zip), Compare (several runs on one plot) ----------------
        page.get_by_role("tab", name="Evaluate").click()
        time.sleep(1)
        _select(page, "eval-run", "run-1")
        page.click("#eval-btn")
        _wait_text(page, "#eval-msg", "Evaluated run-1", 300)
        assert "bits per byte" in page.locator("#eval-report").inner_text()
        assert json.loads((ws / "runs" / "run-1" / "evaluation.json").read_text())["val_loss"] > 0
        page.get_by_role("tab", name="Export").click()
        time.sleep(1)
        _select(page, "export-run", "run-1")
        page.click("#export-btn")
        _wait_text(page, "#export-msg", "Exported run-1", 300)
        assert (ws / "downloads" / "run-1-hf.zip").is_file() and (ws / "exports" / "run-1-hf" / "config.json").is_file()
        page.get_by_role("tab", name="Compare").click()
        time.sleep(1)
        _select(page, "compare-runs", "run-1")
        _select(page, "compare-runs", "run-2")
        page.wait_for_selector("#compare-plot img", timeout=60_000)

        # --- screenshots of every tab, wide and phone-sized -----------------------------------------------------
        page.get_by_role("tab", name="Monitor").click()
        time.sleep(1)
        _select(page, "monitor-run", "run-1")
        _tab_shots(page, "1280")
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.wait_for_selector("#start-btn")
        time.sleep(1)
        _tab_shots(page, "390")
        # what was chosen in the other tabs survived the reload too
        assert page.locator("#export-run input").input_value() == "run-1"
        assert "run-2" in page.locator("#compare-runs").inner_text()
        browser.close()

    # the pushed version holds run-1's checkpoint, not the newest run's
    pulled = pull_model("tester/pick@v1", out=tmp_path / "pulled")
    run1 = ws / "runs" / "run-1" / "checkpoints" / "step_00000012"
    from openllm.hashing import sha256_file

    assert shown == sha256_file(run1 / "model.safetensors")
    assert _weights_digest(pulled) == _weights_digest(run1) != run2_digest


def _bubbles(page, role: str) -> list[str]:
    return [t.strip() for t in page.locator(f"#chat-box [data-testid={role}]").all_inner_texts()]


def test_fine_tune_a_finished_run_then_chat_with_it_in_a_browser(app_server, tmp_path, export_tokenizer_dir):
    """Fine-tune a finished run from the Models tab (a bad upload is refused with its file:line first), follow
    it in Monitor, then chat with it: the reply streams in, the system prompt and the earlier turns are in
    the prompt, and a base model is flagged as not fine-tuned. Screenshots of the Fine-tune action and the
    Chat tab at 1280x800 and 390x844 when OPENLLM_SCREENSHOTS is set."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_export_run

    demo, url, ws = app_server
    make_export_run(ws / "runs" / "base", export_tokenizer_dir, steps=(1,), max_seq_len=256, init_std=0.02)
    bad = tmp_path / "my_chats.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n'
        '{"messages": [{"role": "user", "content": "Hi"}]}\n'
    )
    # an earlier run of the tiny preset that measured 1,000 tokens/s (the Train tab's time estimate reads it)
    from openllm.app.forms import CORPUS_EMBEDDED, parse_train_form, preset_fields

    earlier = ws / "runs" / "earlier"
    earlier.mkdir(parents=True)
    parse_train_form(
        {
            **preset_fields("tiny"),
            "preset": "tiny",
            "run_name": "earlier",
            "lr": 0.002,
            "max_steps": 77,
            "corpus_kind": CORPUS_EMBEDDED,
        }
    ).config.save(earlier / "config.json")
    (earlier / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 5.0, "tokens_per_s": 1000.0}) + "\n" for s in (1, 2, 3))
    )
    (earlier / "status.json").write_text(json.dumps({"state": "stopped", "step": 3, "max_steps": 77}))
    shots = os.environ.get("OPENLLM_SCREENSHOTS")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_selector("#start-btn")

        # --- Train: start from an earlier run's settings, see the time they take here, save them, load one -------
        page.locator("#config-box").get_by_text("The config this run will use").click()
        _select(page, "config-from-run", "earlier")
        _wait_text(page, "#config-msg", "Loaded the settings of run earlier", 20)
        assert page.locator("#lr input").input_value() == "0.002"
        assert page.locator("#steps input").input_value() == "77"
        page.click("#config-btn")
        _wait_text(page, "#config-time", "from run earlier's measured 1,000 tokens/s on this machine", 20)
        with page.expect_download() as dl:
            page.click("#config-save")
        saved = json.loads(Path(dl.value.path()).read_text())
        assert saved["train"]["lr"] == 0.002 and saved["train"]["max_steps"] == 77
        if shots:
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.locator("#config-box").scroll_into_view_if_needed()
            time.sleep(0.5)
            page.screenshot(path=str(SHOTS / "app-config-1280.png"), full_page=False)
        page.locator("#config-load input[type=file]").set_input_files(str(ws / "runs" / "base" / "config.json"))
        _wait_text(page, "#config-msg", "none of the presets' sizes", 20)

        # --- Fine-tune: a bad upload is refused with its file and line, before anything starts --------------------
        page.get_by_role("tab", name="Models").click()
        _select(page, "push-run", "base")
        page.wait_for_selector("#ft-btn:not([disabled])", timeout=20_000)
        page.get_by_label("upload conversations").check()
        page.locator("#ft-file input[type=file]").set_input_files(str(bad))
        problem = _wait_text(page, "#ft-check", "my_chats.jsonl:2:", 30)
        assert "no assistant turn" in problem and str(tmp_path) not in problem
        _fill(page, "ft-name", "chat")
        page.click("#ft-btn")
        _wait_text(page, "#ft-msg", "my_chats.jsonl:2: the conversation has no assistant turn", 30)
        assert not (ws / "runs" / "chat").exists()

        # --- ... the synthetic verse set starts, and Monitor follows it like training --------------------------
        page.get_by_label("use the synthetic verse set").check()
        _wait_text(page, "#ft-check", "synthetic", 10)
        _fill(page, "ft-steps", 6)
        if shots:
            page.locator("#ft-btn").scroll_into_view_if_needed()
            time.sleep(0.5)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "app-finetune-1280.png"), full_page=False)
        page.click("#ft-btn")
        page.wait_for_selector("#monitor-view", timeout=30_000)
        _wait_text(page, "#monitor-banner", "Fine-tuning 'base' into the new run 'chat'", 30)
        page.wait_for_selector("#monitor-view[data-state=finished][data-max-steps='6']", timeout=240_000)
        assert _monitor(page)["step"] == 6
        assert "Monitor" in page.locator("[role=tab][aria-selected=true]").inner_text()
        assert "synthetic" in (ws / "corpora" / "conversations" / "verses-2000" / "about.json").read_text()

        # --- Chat: the fine-tuned run is offered first and said to be fine-tuned --------------------------------
        page.get_by_role("tab", name="Chat").click()
        time.sleep(1)
        assert "fine-tuned run chat" in page.locator("#chat-model input").input_value()
        page.wait_for_selector("#chat-kind[data-kind=finetuned]", timeout=20_000)
        assert "fine-tuned (full) from base" in page.locator("#chat-kind").inner_text()
        _fill(page, "chat-system", "Answer with the verse only.")
        page.locator("#chat-advanced").get_by_text("Sampling, and what the model sees").click()
        _fill(page, "chat-seed", 0)
        _fill(page, "chat-max-new", 16)  # both turns fit the base's 256-token context
        _fill(page, "chat-temp input[type=number]", 1.0)
        _fill(page, "chat-input", "What does Genesis 1:3 say?")
        page.click("#chat-send")
        _wait_text(page, "#chat-msg", "The reply", 120)
        assert _bubbles(page, "user") == ["What does Genesis 1:3 say?"]
        first = _bubbles(page, "bot")
        assert len(first) == 1 and first[0], first
        rendered = page.locator("#chat-rendered textarea").input_value()
        assert rendered.startswith(
            "<s>System: Answer with the verse only.\nUser: What does Genesis 1:3 say?\nAssistant:"
        ), rendered
        # a second turn: the model sees the whole conversation, the system prompt first
        _fill(page, "chat-input", "And the next verse?")
        page.click("#chat-send")
        page.wait_for_function("document.querySelectorAll('#chat-box [data-testid=bot]').length == 2", timeout=60_000)
        _wait_text(page, "#chat-msg", "The reply", 120)
        rendered = page.locator("#chat-rendered textarea").input_value()
        assert rendered.startswith("<s>System: Answer with the verse only.\nUser: What does Genesis 1:3 say?\n")
        assert rendered.rstrip().endswith("User: And the next verse?\nAssistant:"), rendered
        assert first[0].split()[0] in rendered.split("What does Genesis 1:3 say?\n", 1)[1]  # the first reply too
        assert _bubbles(page, "user") == ["What does Genesis 1:3 say?", "And the next verse?"]
        if shots:
            page.evaluate("window.scrollTo(0, 0)")
            time.sleep(0.5)
            page.screenshot(path=str(SHOTS / "app-chat-conversation-1280.png"), full_page=False)

        # --- a base model is flagged: its replies will not follow the template ----------------------------------
        _select(page, "chat-model", "base run base")
        page.wait_for_selector("#chat-kind[data-kind=base]", timeout=20_000)
        assert "not fine-tuned" in page.locator("#chat-kind").inner_text()
        page.click("#chat-clear")
        page.wait_for_function("document.querySelectorAll('#chat-box [data-testid=user]').length == 0", timeout=20_000)

        if shots:  # the phone-sized view of both
            _select(page, "chat-model", "fine-tuned run chat")
            page.set_viewport_size({"width": 390, "height": 844})
            _fill(page, "chat-system", "Answer with the verse only.")
            _fill(page, "chat-input", "What does Genesis 1:3 say?")
            page.click("#chat-send")
            _wait_text(page, "#chat-msg", "The reply", 120)
            page.locator("#chat-system").scroll_into_view_if_needed()
            time.sleep(0.5)
            page.screenshot(path=str(SHOTS / "app-chat-conversation-390.png"), full_page=False)
            page.get_by_role("tab", name="Models").click()
            time.sleep(1)
            page.locator("#ft-btn").scroll_into_view_if_needed()
            time.sleep(0.5)
            page.screenshot(path=str(SHOTS / "app-finetune-390.png"), full_page=False)
        browser.close()


_EXTERNAL = """
import signal, sys
from openllm.rundir import RunLock, move
run = sys.argv[1]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # SIGTERM is the stop request, as for the trainer
lock = RunLock(run, command="openllm train --out " + run).acquire()
move(run, "training", step=5, max_steps=50)
print("holding", flush=True)
signal.sigwait([signal.SIGTERM])
move(run, "stopped", step=6)
lock.release()
"""


@pytest.mark.parametrize("app_server", ["home"], indirect=True)
def test_actions_name_their_run_and_a_workspace_outside_tmp_serves_its_files_in_a_browser(
    app_server, tmp_path, export_tokenizer_dir
):
    """With the workspace under $HOME (not the current folder, not /tmp): the log, the export zip and the config
    file download; Stop stops the run the Monitor shows, never another that trains; Delete removes a finished run
    after a confirmation; a Latin-1 upload and a corpus too small for the smallest vocabulary are reported."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_export_run

    demo, url, ws = app_server
    assert not ws.resolve().is_relative_to(Path.cwd().resolve())
    make_export_run(ws / "runs" / "done", export_tokenizer_dir, steps=(1,))
    (ws / "jobs" / "done").mkdir(parents=True)
    (ws / "jobs" / "done" / "log.txt").write_text("== training\nthe log of run done\n")
    cli_run = ws / "runs" / "cli"
    cli_run.mkdir(parents=True)
    cli = subprocess.Popen(
        [sys.executable, "-c", _EXTERNAL, str(cli_run)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert cli.stdout.readline().strip() == "holding"
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            page.goto(url)
            page.wait_for_selector("#start-btn")
            time.sleep(1)

            # --- the Monitor shows a finished run while another trains: its log downloads ---------------------
            page.get_by_role("tab", name="Monitor").click()
            _select(page, "monitor-run", "done")
            page.wait_for_selector("#monitor-view[data-state=finished]", timeout=20_000)
            page.locator("#log-whole").get_by_text("Whole log").click()
            page.click("#log-show")
            _wait_text(page, "#log-full", "", 5)
            time.sleep(1)
            with page.expect_download() as dl:
                page.click("#log-download")
            assert "the log of run done" in Path(dl.value.path()).read_text()

            # --- Stop acts on the run shown: not training, so Stop is off (Start too: the CLI run trains) --------
            page.get_by_role("tab", name="Train").click()
            time.sleep(3)  # the Monitor's timer has ticked
            assert page.locator("#stop-btn").is_disabled() and page.locator("#start-btn").is_disabled()
            assert cli.poll() is None and demo.openllm_runner.status("cli").state == "training"
            page.get_by_role("tab", name="Monitor").click()
            _select(page, "monitor-run", "cli")
            page.get_by_role("tab", name="Train").click()
            page.wait_for_function("!document.querySelector('#stop-btn').disabled", timeout=20_000)
            page.get_by_role("tab", name="Monitor").click()
            page.wait_for_function("!document.querySelector('#monitor-stop').disabled", timeout=20_000)
            page.click("#monitor-stop")
            _wait_text(page, "#monitor-banner", "Stopping 'cli'", 20)
            assert cli.wait(30) == 0

            # --- Export: the zip downloads from a workspace outside /tmp ----------------------------------------
            page.get_by_role("tab", name="Export").click()
            time.sleep(1)
            _select(page, "export-run", "done")
            _select(page, "export-format", "native")
            page.click("#export-btn")
            _wait_text(page, "#export-msg", "Exported done", 120)
            page.wait_for_selector("#export-download", state="visible", timeout=20_000)
            with page.expect_download() as dl:
                page.click("#export-download")
            assert Path(dl.value.path()).read_bytes()[:2] == b"PK"

            # --- the config file downloads ------------------------------------------------------------------
            page.get_by_role("tab", name="Train").click()
            page.locator("#config-box").get_by_text("The config this run will use").click()
            page.click("#config-btn")
            page.wait_for_selector("#config-save", state="visible", timeout=20_000)
            with page.expect_download() as dl:
                page.click("#config-save")
            assert json.loads(Path(dl.value.path()).read_text())["model"]

            # --- input the check used to misread: Latin-1 text, a corpus too small for the vocabulary ----------
            latin = tmp_path / "latin.txt"
            latin.write_bytes(
                "\n\n".join(f"Paragraph {i}: the café's naïve façade, a résumé read aloud." for i in range(40)).encode(
                    "latin-1"
                )
            )
            page.get_by_text("An uploaded file").click()
            page.locator("#corpus-upload input[type=file]").set_input_files(str(latin))
            _wait_text(page, "#corpus-check", "not valid UTF-8", 60)
            assert "Latin-1" in page.locator("#corpus-check").inner_text()
            small = ws / "corpora" / "small.txt"
            small.write_text("\n\n".join("ab ba ab ba abab baba " * 3 + str(k) for k in range(40)))
            page.get_by_text("A file or folder in the workspace").click()
            _fill(page, "corpus-path", "corpora/small.txt")
            _wait_text(page, "#corpus-check", "smallest Vocabulary size the form allows (324)", 60)

            # --- Delete a finished run, after a confirmation -------------------------------------------------
            page.get_by_role("tab", name="Models").click()
            _select(page, "push-run", "done")
            page.wait_for_selector("#delete-btn:not([disabled])", timeout=20_000)
            page.click("#delete-btn")
            _wait_text(page, "#manage-msg", "tick", 20)
            assert (ws / "runs" / "done").is_dir()
            page.locator("#delete-confirm input").check()
            page.click("#delete-btn")
            _wait_text(page, "#manage-msg", "Deleted run 'done'", 20)
            assert not (ws / "runs" / "done").exists() and not (ws / "jobs" / "done").exists()
            browser.close()
    finally:
        cli.kill()
