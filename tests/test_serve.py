"""openllm serve over plain HTTP (httpx against a real uvicorn server on 127.0.0.1): endpoints, response
shapes, streaming, stop strings, the context budget (400), validation (422), the API key (401), the bounded
queue (429), client disconnects, the original /generate, and the CLI."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from openllm.generate import SamplingParams, generate
from openllm.serve import ServerThread, chat_prompt, create_app
from openllm.tokenizer import apply_chat_template

NAME = "tiny-serve"


@pytest.fixture(scope="module")
def server(serve_lm):
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
    """Until a real `openllm serve` answers /health with 200 (it exits or times out: the test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)


def expected_greedy(lm, prompt: str, n: int) -> tuple[str, int]:
    """The library's greedy continuation of ``prompt`` (n tokens) as text, and the prompt's token count."""
    tok = lm.tokenizer
    ids = tok.encode(prompt)
    out = generate(lm.model, [ids], SamplingParams(max_new_tokens=n, temperature=0, stop_tokens=(tok.eos_id,)))[0]
    before = tok.decode(ids)
    full = tok.decode(ids + out)
    assert full.startswith(before)
    return full[len(before) :], len(ids)


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_health_and_models(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == NAME and h["context"] == 512
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and [d["id"] for d in m["data"]] == [NAME]
    assert m["data"][0]["object"] == "model"


def test_completion_greedy_equals_library(client, serve_lm):
    want, n_prompt = expected_greedy(serve_lm, "def forward(self, x):", 12)
    r = client.post(
        "/v1/completions", json={"model": NAME, "prompt": "def forward(self, x):", "max_tokens": 12, "temperature": 0}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == NAME
    (choice,) = body["choices"]
    assert choice == {"index": 0, "text": want, "logprobs": None, "finish_reason": "length"}
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 12, "total_tokens": n_prompt + 12}


def test_stream_pieces_add_up_to_the_full_text(client):
    req = {"prompt": "import torch", "max_tokens": 20, "temperature": 0}
    full = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    with client.stream(
        "POST", "/v1/completions", json={**req, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20
    pieces = [c["choices"][0] for c in chunks[:-1]]
    assert len(pieces) > 2  # really streamed, not one blob
    assert "".join(p["text"] for p in pieces) == full
    assert [p["finish_reason"] for p in pieces][-1] == "length"
    assert all(p["finish_reason"] is None for p in pieces[:-1])


def test_stop_strings_cut_the_text_streamed_or_not(client):
    req = {"prompt": "class Config:", "max_tokens": 30, "temperature": 0}
    full = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    stop = full[10:13]
    want = full[: full.find(stop)]
    r = client.post("/v1/completions", json={**req, "stop": [stop, "\u2603never"]}).json()
    assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] < 30
    with client.stream("POST", "/v1/completions", json={**req, "stop": stop, "stream": True}) as s:
        pieces = [e["choices"][0] for e in sse_events(s)[:-1]]
    assert "".join(p["text"] for p in pieces) == want and pieces[-1]["finish_reason"] == "stop"


def test_n_seed_and_several_prompts(client):
    req = {"prompt": "return", "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "n": 3, "seed": 7}
    a = client.post("/v1/completions", json=req).json()
    b = client.post("/v1/completions", json=req).json()
    c = client.post("/v1/completions", json={**req, "seed": 8}).json()
    assert [x["index"] for x in a["choices"]] == [0, 1, 2]
    texts = [x["text"] for x in a["choices"]]
    assert texts == [x["text"] for x in b["choices"]]  # a seed makes sampling reproducible
    assert texts != [x["text"] for x in c["choices"]]
    assert len(set(texts)) > 1  # the n samples differ from each other
    assert a["usage"]["completion_tokens"] == 24
    # a list of prompts: one choice per prompt (times n), each the same as asking alone
    multi = client.post(
        "/v1/completions", json={"prompt": ["return", "import os"], "max_tokens": 6, "temperature": 0, "n": 2}
    ).json()
    single = [
        client.post("/v1/completions", json={"prompt": p, "max_tokens": 6, "temperature": 0}).json()["choices"][0][
            "text"
        ]
        for p in ("return", "import os")
    ]
    assert [x["text"] for x in multi["choices"]] == [single[0], single[0], single[1], single[1]]
    assert [x["index"] for x in multi["choices"]] == [0, 1, 2, 3]


def test_token_id_prompt_and_echo(client, serve_lm):
    ids = serve_lm.tokenizer.encode("def load(")
    by_text = client.post("/v1/completions", json={"prompt": "def load(", "max_tokens": 5, "temperature": 0}).json()
    by_ids = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 5, "temperature": 0}).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    echo = client.post(
        "/v1/completions", json={"prompt": "def load(", "max_tokens": 5, "temperature": 0, "echo": True}
    ).json()
    assert echo["choices"][0]["text"] == "def load(" + by_text["choices"][0]["text"]


def test_chat_uses_the_projects_chat_template(client, serve_lm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    prompt = chat_prompt(serve_lm.tokenizer, [("system", "Be brief."), ("user", "Hello there")])
    assert prompt == serve_lm.tokenizer.encode_chat(messages)
    assert apply_chat_template(messages).endswith("System: Be brief.\nUser: Hello there\nAssistant:")
    completion = client.post(
        "/v1/completions", json={"prompt": prompt, "max_tokens": 10, "temperature": 0, "stop": ["\nUser:", "\nSystem:"]}
    ).json()["choices"][0]
    r = client.post(
        "/v1/chat/completions", json={"model": NAME, "messages": messages, "max_tokens": 10, "temperature": 0}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["usage"]["prompt_tokens"] == len(prompt)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": completion["text"].lstrip()}
    assert choice["finish_reason"] == completion["finish_reason"]
    # content given as a list of text parts is the same message
    parts = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
    ]
    again = client.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 10, "temperature": 0}).json()
    assert again["choices"][0]["message"] == choice["message"]
    with client.stream(
        "POST", "/v1/chat/completions", json={"messages": messages, "max_tokens": 10, "temperature": 0, "stream": True}
    ) as s:
        events = sse_events(s)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in deltas) == choice["message"]["content"]
    assert events[-2]["object"] == "chat.completion.chunk" and events[-2]["choices"][0]["finish_reason"]


def test_original_generate_endpoint(client):
    want = client.post("/v1/completions", json={"prompt": "def main():", "max_tokens": 10, "temperature": 0}).json()[
        "choices"
    ][0]["text"]
    r = client.post("/generate", json={"prompt": "def main():", "max_length": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] == [want] and body["prompt"] == "def main():"
    assert body["parameters"]["max_new_tokens"] == 10 and body["generation_time"] >= 0
    many = client.post(
        "/generate",
        json={"prompt": "def main():", "max_new_tokens": 4, "num_return_sequences": 3, "top_k": 20, "top_p": 0.95},
    ).json()
    assert len(many["generated_text"]) == 3 and many["usage"]["completion_tokens"] == 12


def test_context_budget_is_a_400_with_the_numbers(client):
    r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 600})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and err["code"] == "context_length_exceeded"
    assert "600" in err["message"] and "512" in err["message"]
    long_prompt = " ".join(["tokenizer"] * 600)
    r = client.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and "512" in r.json()["error"]["message"]
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1000}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = client.post("/generate", json={"prompt": "hi", "max_length": 2048})
    assert r.status_code == 400 and "max_length" in r.json()["error"]["message"]
    # exactly the rest of the context is allowed, one more token is not
    prompt = " ".join(["tokenizer"] * 150)
    n = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()["usage"]["prompt_tokens"]
    assert 150 <= n < 500
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 512 - n, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 512
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 513 - n})
    assert r.status_code == 400 and f"at most {512 - n} new tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/chat/completions", {"max_tokens": 5}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ("/generate", {"prompt": "x", "num_return_sequences": 1.5}, "num_return_sequences"),
    ],
)
def test_wrong_types_are_422_naming_the_field(client, path, body, param):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]


def test_malformed_json_is_422(client):
    r = client.post("/v1/completions", content=b'{"prompt": "x", ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["error"]["message"]


def test_api_key(serve_lm, monkeypatch):
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME, api_key="s3cret")
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.get("/health").status_code == 200  # load balancers need no key
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.post("/v1/completions", json={"prompt": "x"}, headers=headers).status_code == 401
            assert c.post("/generate", json={"prompt": "x"}, headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=ok).status_code == 200
    monkeypatch.setenv("OPENLLM_API_KEY", "from-env")
    app = create_app(serve_lm.model, serve_lm.tokenizer)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200


def gated_model(model):
    """A copy of the model whose every forward pass (its token embedding, the first thing each pass runs)
    waits for ``gate``: the test decides when the engine may run."""
    gated = copy.deepcopy(model)
    gate = threading.Event()
    forward = gated.tok_embeddings.forward

    def waiting_forward(*args, **kwargs):
        assert gate.wait(30), "test never opened the gate"
        return forward(*args, **kwargs)

    gated.tok_embeddings.forward = waiting_forward
    return gated, gate


def test_full_queue_is_429_and_disconnects_cancel(serve_lm):
    model, gate = gated_model(serve_lm.model)
    app = create_app(model, serve_lm.tokenizer, max_batch=1, max_queue=1)
    engine = app.state.server.engine
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        # A: a streaming request the engine starts on (and blocks in the model, until the gate opens)
        a_client = httpx.Client(base_url=s.url, timeout=30)
        a = a_client.send(
            a_client.build_request(
                "POST", "/v1/completions", json={"prompt": "first", "max_tokens": 400, "stream": True}
            ),
            stream=True,
        )
        wait_for(lambda: engine.snapshot()["running_seqs"] == 1)
        # B: waits in the queue
        b_result = {}
        b = threading.Thread(
            target=lambda: b_result.update(
                r=c.post("/v1/completions", json={"prompt": "second", "max_tokens": 5, "temperature": 0})
            )
        )
        b.start()
        wait_for(lambda: engine.snapshot()["waiting"] == 1)
        # C: the queue is full
        r = c.post("/v1/completions", json={"prompt": "third", "max_tokens": 5})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        # A's client goes away while its request runs: the server stops generating for it
        a.close()
        a_client.close()
        time.sleep(0.3)  # let the server notice the closed connection before the model runs again
        gate.set()
        b.join(30)
        assert b_result["r"].status_code == 200
        wait_for(lambda: engine.snapshot()["completed"] + engine.snapshot()["cancelled"] == 2)
        stats = engine.snapshot()
        assert stats["cancelled"] == 1 and stats["rejected"] == 1
        assert stats["tokens"] <= 5 + 2  # B's 5, and at most a step or two of A's 400


@pytest.mark.slow
def test_non_streaming_client_disconnect_cancels(serve_lm):
    model, gate = gated_model(serve_lm.model)
    app = create_app(model, serve_lm.tokenizer)
    engine = app.state.server.engine
    with ServerThread(app) as s:
        outcome = []

        def impatient():
            try:
                httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 400}, timeout=0.5)
                outcome.append("answered")
            except httpx.ReadTimeout:
                outcome.append("gave up")

        t = threading.Thread(target=impatient)
        t.start()
        wait_for(lambda: engine.snapshot()["running_seqs"] == 1)
        t.join(10)
        assert outcome == ["gave up"]
        time.sleep(0.6)  # the handler polls its connection every 0.25 s
        gate.set()
        wait_for(lambda: engine.snapshot()["cancelled"] == 1)
        assert engine.snapshot()["tokens"] <= 2


def test_disconnect_mid_stream_stops_generation(server, serve_lm):
    engine = server.app.state.server.engine
    before = engine.snapshot()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream(
            "POST", "/v1/completions", json={"prompt": "stream", "max_tokens": 500, "temperature": 0, "stream": True}
        ) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(4)]
            assert got[0].startswith("data: ")
    wait_for(lambda: engine.snapshot()["cancelled"] == before["cancelled"] + 1)
    assert engine.snapshot()["tokens"] - before["tokens"] < 500


def _serve_process(source, *options: str) -> tuple[subprocess.Popen, str]:
    """A real `openllm serve SOURCE OPTIONS` on a free port, once /health answers 200; and its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openllm", "serve", str(source), "--port", str(port), "--log-level", "warning"]
        + list(options),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_cli_serve(serve_run):
    port = _free_port()
    env = {**os.environ, "OPENLLM_API_KEY": "k"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openllm", "serve", str(serve_run), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, url)
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert models["data"][0]["id"] == serve_run.name
        r = httpx.post(
            url + "/v1/completions",
            json={"prompt": "hi", "max_tokens": 3, "temperature": 0},  # greedy: EOS never wins (serve_run)
            headers={"Authorization": "Bearer k"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"on http://127.0.0.1:{port}" in out


@pytest.mark.slow
def test_cli_serve_bad_source_is_a_one_line_error(tmp_path):
    from conftest import run_cli

    r = run_cli("serve", str(tmp_path / "missing"), check=False)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_serve_a_hub_version(serve_run):
    from openllm.publish import push_model
    from openllm.serve import app_from_source

    push_model(serve_run, repo_id="me/serve-tiny", version="v1")  # the test's own local hub (conftest)
    app = app_from_source("me/serve-tiny@v1")
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        wait_for(lambda: c.get("/health").status_code == 200, timeout=60)
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["me/serve-tiny@v1"]
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "me/serve-tiny@v1"


def test_a_failing_generation_is_a_500_and_the_server_lives_on(serve_lm):
    model = copy.deepcopy(serve_lm.model)
    forward = model.tok_embeddings.forward
    broken = threading.Event()

    def flaky_forward(*args, **kwargs):
        if broken.is_set():
            raise RuntimeError("simulated device failure")
        return forward(*args, **kwargs)

    model.tok_embeddings.forward = flaky_forward
    app = create_app(model, serve_lm.tokenizer)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        broken.set()
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 500 and "simulated device failure" in r.json()["error"]["message"]
        with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True}) as st:
            events = sse_events(st)
        # the stream ends cleanly: the error event, then [DONE]
        assert "simulated device failure" in events[-2]["error"]["message"] and events[-1] == "[DONE]"
        broken.clear()
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert app.state.server.engine.snapshot()["errors"] == 2


def test_a_short_request_is_answered_before_its_long_batch_mate_finishes(serve_lm):
    model, gate = gated_model(serve_lm.model)
    app = create_app(model, serve_lm.tokenizer)
    engine = app.state.server.engine
    results = {}

    def send(name, max_tokens):
        results[name] = httpx.post(
            s.url + "/v1/completions", json={"prompt": name, "max_tokens": max_tokens, "temperature": 0}, timeout=60
        )
        results[name + "_completed"] = engine.snapshot()["completed"]

    with ServerThread(app) as s:
        first = threading.Thread(target=send, args=("first", 1))
        first.start()
        wait_for(lambda: engine.snapshot()["running_seqs"] == 1)  # the model is held at the gate
        long, short = (threading.Thread(target=send, args=(n, k)) for n, k in (("long", 500), ("short", 2)))
        long.start()
        short.start()
        wait_for(lambda: engine.snapshot()["waiting"] == 2)
        gate.set()
        for t in (first, long, short):
            t.join(60)
    assert all(results[n].status_code == 200 for n in ("first", "long", "short"))
    assert engine.snapshot()["largest_batch"] == 2  # long and short ran together
    assert results["short_completed"] == 2  # answered while long was still generating
    assert results["long"].json()["usage"]["completion_tokens"] == 500


# --- logprobs, model ids, refusals, penalties, tokenize, metrics, health, shutdown ------------------------


def _model_logprobs(lm, ids: list[int]):
    import torch

    with torch.no_grad():
        return lm.model(torch.tensor([ids]))[0].float().log_softmax(-1)


def test_echo_logprobs_are_the_models_log_softmax(client, serve_lm):
    ids = serve_lm.tokenizer.encode("def forward(self, x): return x")
    lp = _model_logprobs(serve_lm, ids)
    for max_tokens in (0, 3):
        r = client.post(
            "/v1/completions",
            json={"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "logprobs": 2, "echo": True},
        )
        assert r.status_code == 200, r.text
        got = r.json()["choices"][0]["logprobs"]
        assert len(got["tokens"]) == len(got["token_logprobs"]) == len(got["top_logprobs"]) == len(ids) + max_tokens
        assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
        for t in range(1, len(ids)):
            assert got["token_logprobs"][t] == pytest.approx(float(lp[t - 1, ids[t]]), abs=1e-4)
            best = lp[t - 1].topk(2)
            # the two most likely tokens, and the scored one
            assert max(got["top_logprobs"][t].values()) == pytest.approx(float(best.values[0]), abs=1e-4)
            assert 2 <= len(got["top_logprobs"][t]) <= 3
        assert got["text_offset"][0] == 0 and got["text_offset"] == sorted(got["text_offset"])
    # the generated tokens are scored in the context of the prompt and the tokens before them
    gen = serve_lm.tokenizer.encode(r.json()["choices"][0]["text"][len(serve_lm.tokenizer.decode(ids)) :])
    full = _model_logprobs(serve_lm, ids + gen)
    first_new = got["token_logprobs"][len(ids)]
    assert first_new == pytest.approx(float(full[len(ids) - 1].max()), abs=1e-4)  # greedy: the best token


def test_chat_logprobs_shape(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
        },
    )
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == r.json()["usage"]["completion_tokens"] == 4
    for c in content:
        assert set(c) == {"token", "logprob", "bytes", "top_logprobs"} and len(c["top_logprobs"]) == 3
        assert c["logprob"] == pytest.approx(c["top_logprobs"][0]["logprob"])  # greedy
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_models_by_id_and_unknown_models(client):
    assert client.get(f"/v1/models/{NAME}").json()["id"] == NAME
    r = client.get("/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    for path, body in [
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and "gpt-4" in r.text


@pytest.mark.parametrize(
    "extra,param,words",
    [
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        ({"tool_choice": "auto"}, "tool_choice", "needs tools"),
        ({"response_format": {"type": "yaml"}}, "response_format", "not one of"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}},
            "response_format",
            "cannot be combined",
        ),
    ],
)
def test_unsupported_chat_options_are_400(client, extra, param, words):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert words in r.json()["error"]["message"]


def test_penalties_and_logit_bias_act(client, serve_lm):
    req = {"prompt": "import torch", "max_tokens": 24, "temperature": 0}
    plain = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    text_req = {**req, "response_format": {"type": "text"}}
    assert (
        client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **text_req}
        ).status_code
        == 200
    )
    penalised = client.post("/v1/completions", json={**req, "frequency_penalty": 2.0, "presence_penalty": 2.0}).json()[
        "choices"
    ][0]["text"]
    assert penalised != plain
    tok = serve_lm.tokenizer.encode(" tokenizer")[-1]
    forced = client.post(
        "/v1/completions", json={**req, "max_tokens": 3, "logprobs": 0, "logit_bias": {str(tok): 100}}
    ).json()
    piece = serve_lm.tokenizer.id_to_piece(tok).replace("\u2581", " ")
    assert forced["choices"][0]["logprobs"]["tokens"] == [piece] * 3
    r = client.post("/v1/completions", json={**req, "logit_bias": {"999999": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_tokenize_and_detokenize(client, serve_lm):
    r = client.post("/tokenize", json={"prompt": "hello world"}).json()
    assert r["tokens"] == serve_lm.tokenizer.encode("hello world") and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 512
    assert client.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "hello world"}
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == serve_lm.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == serve_lm.tokenizer.id_to_piece(serve_lm.tokenizer.eos_id) and info["chat_template"]


def _parse_metrics(text: str) -> dict[str, float]:
    import re

    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) openllm_\w+ .+", line), line
            continue
        m = re.fullmatch(r'(openllm_\w+(?:\{[a-z_]+="[^"]*"\})?) (\S+)', line)
        assert m, line
        out[m.group(1)] = float(m.group(2))
    return out


def test_metrics_in_prometheus_text_format(client):
    before = _parse_metrics(client.get("/metrics").text)
    r = client.post("/v1/completions", json={"prompt": "def main():", "max_tokens": 5, "temperature": 0}).json()
    resp = client.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = _parse_metrics(resp.text)
    assert after["openllm_generation_tokens_total"] - before["openllm_generation_tokens_total"] == 5
    assert after["openllm_prompt_tokens_total"] - before["openllm_prompt_tokens_total"] == r["usage"]["prompt_tokens"]
    assert after["openllm_requests_running"] == after["openllm_requests_waiting"] == 0
    assert after["openllm_kv_cache_slots_used"] == 0 and after["openllm_kv_cache_slots"] == 32
    ttft = after["openllm_time_to_first_token_seconds_count"]
    assert ttft - before["openllm_time_to_first_token_seconds_count"] == 1
    assert after['openllm_time_to_first_token_seconds_bucket{le="+Inf"}'] == ttft
    assert (
        after["openllm_time_per_output_token_seconds_count"] - before["openllm_time_per_output_token_seconds_count"]
        == 4
    )
    buckets = [v for k, v in after.items() if k.startswith("openllm_time_per_output_token_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert 0 <= after["openllm_kv_cache_usage_ratio"] <= 1


def test_health_is_503_while_loading_then_200(serve_lm):
    release = threading.Event()

    def slow_load():
        assert release.wait(30)
        return serve_lm.model, serve_lm.tokenizer

    app = create_app(load=slow_load, model_name=NAME, api_key="k")
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert c.get("/metrics").status_code == 401  # behind the key, loaded or not
        release.set()
        wait_for(lambda: c.get("/health").status_code == 200)
        assert (
            c.post(
                "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": "Bearer k"}
            ).status_code
            == 200
        )


def test_a_failed_load_is_a_503_saying_why():
    def broken():
        raise RuntimeError("weights are damaged")

    app = create_app(load=broken)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        wait_for(lambda: c.get("/health").json()["status"] == "error")
        assert "weights are damaged" in c.get("/health").json()["error"]


def test_kv_cache_tokens_limit_is_a_400_with_the_numbers(serve_lm):
    app = create_app(serve_lm.model, serve_lm.tokenizer, max_batch=4, kv_cache_tokens=400)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 150})
        assert r.status_code == 400 and "100 tokens a KV-cache slot holds" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 50}).status_code == 200


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_exits_0(serve_run):
    import signal

    proc, url = _serve_process(serve_run, "--shutdown-timeout", "20")
    try:
        result = {}
        started = threading.Event()

        def in_flight():
            with httpx.stream(
                "POST",
                url + "/v1/completions",
                timeout=60,
                json={"prompt": "x", "max_tokens": 120, "temperature": 0, "stream": True},
            ) as r:
                lines = []
                for line in r.iter_lines():
                    started.set()
                    lines.append(line)
                result["events"] = [ln for ln in lines if ln]

        t = threading.Thread(target=in_flight)
        t.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(30) == 0
        # the request that was running when the signal came was answered in full
        assert result["events"][-1] == "data: [DONE]"
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)


def test_body_limit_error_shapes_and_no_cdn_docs(serve_lm):
    """A body over the limit is 413 before it is read (with or without Content-Length); unknown paths and
    methods answer in OpenAI's error shape; no interactive docs (Swagger UI would load from a CDN)."""
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME, max_body_bytes=1000)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        big = {"prompt": "x" * 5000, "max_tokens": 1}
        r = c.post("/v1/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        chunks = (part for part in [b'{"prompt": "', b"x" * 3000, b'", "max_tokens": 1}'])
        r = c.post("/v1/completions", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "1,000 bytes" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
        for method, path, status in (
            ("GET", "/nope", 404),
            ("GET", "/v1/completions", 405),
            ("GET", "/docs", 404),
            ("GET", "/openapi.json", 404),
            ("GET", "/redoc", 404),
        ):
            r = c.request(method, path)
            assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_health_answers_while_a_long_prompt_is_tokenized(serve_lm):
    """Tokenizing happens off the event loop: /health answers while a 1 MB prompt is being encoded."""
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME)
    text = "In the beginning God created the heaven and the earth. " * 18000
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=120) as c:
        done = threading.Event()
        answers = []

        def big():
            answers.append(c.post("/v1/completions", json={"prompt": text, "max_tokens": 1}).status_code)
            done.set()

        t = threading.Thread(target=big)
        t.start()
        health = []
        while not done.is_set():
            start = time.perf_counter()
            assert httpx.get(f"{s.url}/health", timeout=30).status_code == 200
            health.append(time.perf_counter() - start)
            time.sleep(0.05)
        t.join()
        assert answers == [400]  # the prompt does not fit the context, which it says once it is tokenized
        assert len(health) >= 2  # /health was answered while the big request was being read and tokenized


# --- one request never fails or stalls another (issue 24) ---------------------------------------------------


def _concurrently(*calls):
    """Run the calls on threads at once; their results in order."""
    results: list = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.mark.timeout(120)
def test_a_megabyte_stop_string_stalls_nobody(server):
    """Holding back text that could grow into a stop string costs a bounded amount per token (it built every
    prefix of every stop string, per token: a 1 MB stop stalled all generation for minutes)."""
    with httpx.Client(base_url=server.url, timeout=100) as c:
        huge = {"prompt": "Hello", "max_tokens": 40, "temperature": 0, "stream": True, "stop": ["ab" * 500_000]}
        plain = {"prompt": "Hello", "max_tokens": 40, "temperature": 0}

        def streamed():
            with c.stream("POST", "/v1/completions", json=huge) as r:
                return r.status_code, sse_events(r)

        (status, events), other = _concurrently(streamed, lambda: c.post("/v1/completions", json=plain))
    assert status == 200 and events[-1] == "[DONE]" and other.status_code == 200
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert text == other.json()["choices"][0]["text"]


def raw_post(client, path, body):
    """POST ``body`` as JSON with non-ASCII escaped, so a lone surrogate travels as ``\\udXXX`` (valid JSON)."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def test_odd_values_are_400s_of_their_own_request_and_fail_nobody_else(client):
    """Every per-request value is checked before it reaches the batched step: a top_p that is 0 in float32
    samples (keeping the best token), a non-ASCII digit as a logit_bias key and a lone surrogate in a prompt
    are 400s; the requests running beside them are answered."""
    base = {"prompt": "Hello", "max_tokens": 12}
    tiny_p = {**base, "temperature": 0.9, "top_p": 1e-300, "seed": 1}
    greedy = {**base, "temperature": 0}
    results = _concurrently(
        lambda: client.post("/v1/completions", json=tiny_p),
        lambda: client.post("/v1/completions", json={**base, "logit_bias": {"²": 5}}),
        lambda: raw_post(client, "/v1/completions", {**base, "prompt": "a\ud800b"}),
        lambda: raw_post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "\udfff"}]}),
        lambda: raw_post(client, "/tokenize", {"prompt": "x\ud800"}),
        lambda: client.post("/v1/completions", json=greedy),
    )
    codes = [r.status_code for r in results]
    assert codes == [200, 400, 400, 400, 400, 200], [r.text for r in results]
    assert results[0].json()["choices"][0]["text"] == results[-1].json()["choices"][0]["text"]
    assert results[1].json()["error"]["param"] == "logit_bias"
    assert all(r.json()["error"]["param"] in ("prompt", "messages") for r in results[2:5])


def test_eos_as_the_next_token_is_in_the_echoed_logprobs(serve_lm):
    """lm-eval's local-completions scores a continuation with echo + max_tokens 1 and drops the last entry as
    the generated one: when that token is EOS it must still be there (it was left out, so lm-eval dropped a
    prompt token's score instead)."""
    model = copy.deepcopy(serve_lm.model)
    eos = serve_lm.tokenizer.eos_id
    seen = []
    hook = model.norm.register_forward_hook(lambda m, i, out: seen.append(out[0, -1]))
    with torch_no_grad():
        model(torch_tensor([serve_lm.tokenizer.encode("In the beginning")]))
        hook.remove()
        model.lm_head.weight[eos] = 50 * seen[0] / seen[0].norm()  # EOS wins after this prompt
    app = create_app(model, serve_lm.tokenizer, model_name=NAME)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        body = {"prompt": "In the beginning", "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
        r = c.post("/v1/completions", json=body).json()
    n_prompt = len(serve_lm.tokenizer.encode("In the beginning"))
    lps = r["choices"][0]["logprobs"]
    assert r["choices"][0]["finish_reason"] == "stop"
    assert len(lps["token_logprobs"]) == n_prompt + 1 and lps["token_logprobs"][-1] > -0.01


def torch_no_grad():
    import torch

    return torch.no_grad()


def torch_tensor(data):
    import torch

    return torch.tensor(data)


def test_a_model_wider_than_its_tokenizer_never_samples_what_cannot_be_decoded(serve_lm):
    """An embedding padded past the tokenizer's vocabulary: those ids are never sampled (23 of 24 concurrent
    requests failed when one drew such an id)."""
    model = copy.deepcopy(serve_lm.model)
    vocab = serve_lm.tokenizer.vocab_size
    with torch_no_grad():
        model.lm_head.weight[vocab - 8 :] = model.lm_head.weight.abs().max() * 50  # the last 8 ids win
    app = create_app(model, _NarrowTokenizer(serve_lm.tokenizer, vocab - 8), model_name=NAME)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        bodies = [{"prompt": "Hello", "max_tokens": 8, "temperature": 1.0, "seed": i} for i in range(12)]
        results = _concurrently(*[lambda b=b: c.post("/v1/completions", json=b) for b in bodies])
    assert [r.status_code for r in results] == [200] * 12


class _NarrowTokenizer:
    """A tokenizer that knows only the first ``n`` ids (decode fails past them, as a real one would)."""

    def __init__(self, tok, n: int) -> None:
        self.tok, self.vocab_size, self.eos_id = tok, n, tok.eos_id

    def encode(self, text):
        return self.tok.encode(text)

    def decode(self, ids):
        if any(i >= self.vocab_size for i in ids):
            raise IndexError(f"token id {max(ids)} is out of range")
        return self.tok.decode(ids)

    def id_to_piece(self, i):
        return self.tok.id_to_piece(i)


@pytest.mark.slow
def test_slow_clients_are_timed_out_and_health_answers(serve_lm):
    """Connections that send their headers or body too slowly are closed (408 for a body), so 80 of them
    neither exhaust the server nor keep /health from answering."""
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME, body_timeout=1.0)
    with ServerThread(app, header_timeout=1.0) as s:
        host, port = "127.0.0.1", s.port
        slow = []
        for i in range(80):
            sock = socket.create_connection((host, port))
            if i % 2:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # headers never end
            else:
                sock.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )  # the body never comes
            slow.append(sock)
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        time.sleep(2.5)
        answers = []
        for sock in slow:
            sock.settimeout(5)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError:
                pass
            answers.append(data)
            sock.close()
    assert all(a == b"" for a in answers[1::2])  # headers never ended: closed without a word
    assert all(a.startswith(b"HTTP/1.1 408") and b"request_timeout" in a for a in answers[0::2]), answers[0]


def test_tokenize_and_generate_encode_off_the_event_loop(serve_lm):
    """/tokenize and the original /generate tokenize on a worker thread: /health answers while they read a
    big prompt."""
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME)
    text = "In the beginning God created the heaven and the earth. " * 18000
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=120) as c:
        for path, body in (("/tokenize", {"prompt": text}), ("/generate", {"prompt": text, "max_new_tokens": 1})):
            done = threading.Event()
            answers: list[int] = []

            def big(path=path, body=body, answers=answers, done=done):
                answers.append(c.post(path, json=body).status_code)
                done.set()

            t = threading.Thread(target=big)
            t.start()
            health = 0
            while not done.is_set():
                assert httpx.get(f"{s.url}/health", timeout=30).status_code == 200
                health += 1
                time.sleep(0.05)
            t.join()
            assert answers[0] in (200, 400) and health >= 2, (path, answers, health)


@pytest.mark.slow
def test_shutdown_timeout_must_be_a_finite_number(serve_run):
    for bad in ("nan", "inf", "-1"):
        r = subprocess.run(
            [sys.executable, "-m", "openllm", "serve", str(serve_run), "--shutdown-timeout", bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "--shutdown-timeout" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_sigterm_past_the_grace_period_answers_503_and_ends_streams_cleanly(serve_run):
    """Requests still running when --shutdown-timeout runs out get an OpenAI-shaped 503 (non-streaming) or an
    error event and [DONE] (streaming), and the process exits soon after the timeout (it took 23.6 s after
    a 5 s timeout and answered plain-text 500s and cut streams)."""
    import signal

    proc, url = _serve_process(serve_run, "--shutdown-timeout", "1", "--max-batch", "16", "--threads", "1")
    try:
        result = {}
        started = threading.Event()
        # 16 sequences of 500 tokens decode together: far more than the 1 s the shutdown leaves them
        long = {"prompt": "x", "max_tokens": 500, "temperature": 0, "n": 8}

        def streamed():
            with httpx.stream("POST", url + "/v1/completions", timeout=60, json={**long, "stream": True}) as r:
                lines = []
                for line in r.iter_lines():
                    started.set()
                    lines.append(line)
                result["events"] = [ln for ln in lines if ln]

        def plain():
            result["plain"] = httpx.post(url + "/v1/completions", timeout=60, json=long)

        threads = [threading.Thread(target=streamed), threading.Thread(target=plain)]
        for t in threads:
            t.start()
        assert started.wait(30)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(30) == 0
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)
    assert took < 1 + 10, took  # it took 18.6 s past the timeout
    assert result["plain"].status_code == 503 and result["plain"].json()["error"]["code"] == "server_shutting_down"
    events = result["events"]
    assert events[-1] == "data: [DONE]" and "server_shutting_down" in events[-2], events[-3:]


@pytest.mark.slow
def test_an_address_that_cannot_be_listened_on_is_a_one_line_refusal(serve_run):
    """`--host 256.1.1.1` aborted the process (SIGABRT) from inside uvicorn while the model loaded; a port in
    use likewise: both are refused before anything starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["--host", "256.1.1.1"], ["--port", str(port)]):
            r = subprocess.run(
                [sys.executable, "-m", "openllm", "serve", str(serve_run), *args],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_while_the_model_loads_exits_cleanly(serve_run):
    """Ctrl-C while the model loads (on its background thread) aborted the process with "terminate called
    without an active exception" (exit 134, 4 of 6 tries; issue 24): it now exits 0 as any Ctrl-C of the
    server does (docs/serve.md). The load starts as uvicorn starts the app, so SIGINT goes right after that
    line; a try whose load finished first ("ready:" printed) does not count and is tried again (about 1 in 4
    tries lands inside the load on 2 busy cores; before the fix such a try aborted)."""
    import signal

    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-m", "openllm", "serve", str(serve_run), "--port", str(_free_port())],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        err = ""
        try:
            while "Application startup complete" not in err and proc.poll() is None:
                err += proc.stderr.readline()
            proc.send_signal(signal.SIGINT)
            out, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=20)
        err += rest
        assert proc.returncode == 0, (proc.returncode, err[-500:])
        assert "Traceback" not in err and "terminate called" not in err, err[-500:]
        if "ready:" not in out:
            return  # the signal came while the model was loading
    pytest.skip("the model finished loading before SIGINT in 12 tries")


def test_prefix_cache_hits_are_reported(serve_lm):
    """A chat's next turn reuses the keys and values of the turn before: /metrics counts the tokens."""
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME)
    system = {"role": "system", "content": "You are a careful assistant who answers in one short sentence. " * 3}
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        first = [system, {"role": "user", "content": "Hello there"}]
        r = c.post("/v1/chat/completions", json={"messages": first, "max_tokens": 8, "temperature": 0}).json()
        second = first + [r["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        assert c.post("/v1/chat/completions", json={"messages": second, "max_tokens": 8}).status_code == 200
        metrics = _parse_metrics(c.get("/metrics").text)
    assert metrics["openllm_prefix_cache_queries_total"] == 2
    assert metrics["openllm_prefix_cache_hit_tokens_total"] >= 32
