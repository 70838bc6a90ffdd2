"""A bounded load test on loopback: 64 concurrent requests (completions, chat, streaming, seeded sampling)
against one continuously batching server, then 256 more at concurrency 64 with clients that disconnect at
random points; every other request succeeds and gets exactly the output it gets when sent alone, and no
KV-cache slot is left held."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

from openllm.serve import ServerThread, create_app

CONCURRENCY = 64


def _requests() -> list[tuple[str, dict]]:
    reqs: list[tuple[str, dict]] = []
    words = ["def", "class", "import", "return", "self", "tokenizer", "model", "config"]
    for i in range(40):  # greedy completions, ragged prompts and lengths (12 distinct, each sent 3-4 times)
        k = i % 12
        prompt = " ".join(words[j % len(words)] for j in range(k % 7 + 1)) + f" {k}"
        reqs.append(("/v1/completions", {"prompt": prompt, "max_tokens": 4 + (k % 4) * 4, "temperature": 0}))
    for i in range(12):  # greedy chat
        reqs.append(
            (
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": f"question {i % 4}"}], "max_tokens": 10, "temperature": 0},
            )
        )
    for i in range(8):  # streamed greedy completions
        reqs.append(
            (
                "/v1/completions",
                {"prompt": f"for x in range({i % 4}):", "max_tokens": 12, "temperature": 0, "stream": True},
            )
        )
    for i in range(4):  # seeded sampling: reproducible whatever else is running
        reqs.append(
            (
                "/v1/completions",
                {"prompt": "import", "max_tokens": 8, "temperature": 0.9, "top_p": 0.95, "seed": 100 + i % 2, "n": 2},
            )
        )
    assert len(reqs) == CONCURRENCY
    return reqs


async def _send(client: httpx.AsyncClient, path: str, body: dict) -> list[str]:
    """The choice texts of one request (streamed ones reassembled from their events)."""
    if body.get("stream"):
        texts: dict[int, str] = {}
        async with client.stream("POST", path, json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line or line == "data: [DONE]":
                    continue
                for ch in json.loads(line[len("data: ") :])["choices"]:
                    texts[ch["index"]] = texts.get(ch["index"], "") + (
                        ch.get("text") or ch.get("delta", {}).get("content") or ""
                    )
        return [texts[i] for i in sorted(texts)]
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return [c["text"] if "text" in c else c["message"]["content"] for c in r.json()["choices"]]


async def _quit_early(client: httpx.AsyncClient, i: int, after: int) -> None:
    """A request whose client disconnects: a stream after ``after`` events, or a plain request that gives up
    waiting (odd ``i``)."""
    body = {"prompt": f"while True: {i}", "max_tokens": 480, "temperature": 0}
    if i % 2:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/completions", json=body, timeout=0.05 * after)
        return
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        seen = 0
        async for line in r.aiter_lines():
            seen += bool(line)
            if seen >= after:
                break


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow
def test_64_concurrent_requests_match_single_request_outputs(serve_lm):
    app = create_app(serve_lm.model, serve_lm.tokenizer, max_batch=32, max_queue=4 * CONCURRENCY)
    reqs = _requests()
    with ServerThread(app) as server:

        async def main():
            limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
            async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
                # each distinct request alone first: the reference
                alone = {}
                for path, body in reqs:
                    key = json.dumps([path, body], sort_keys=True)
                    if key not in alone:
                        alone[key] = await _send(client, path, body)
                together = await asyncio.gather(*(_send(client, p, b) for p, b in reqs))
                # 256 more at concurrency 64: the requests three times over, and 64 clients that disconnect
                # at random points while the others run
                rng = random.Random(0)
                slots = asyncio.Semaphore(CONCURRENCY)
                plan = [("send", p, b) for p, b in reqs * 3] + [("quit", i, rng.randint(1, 6)) for i in range(64)]
                rng.shuffle(plan)

                async def run(item):
                    async with slots:
                        if item[0] == "quit":
                            return await _quit_early(client, item[1], item[2])
                        return await _send(client, item[1], item[2])

                outs = await asyncio.gather(*(run(item) for item in plan))
                again = [(item[1], item[2], out) for item, out in zip(plan, outs) if item[0] == "send"]
                return alone, together, again

        alone, together, again = asyncio.run(main())
        engine = app.state.server.engine
        _wait(lambda: engine.snapshot()["slots_used"] == 0)
        stats = engine.snapshot()
        metrics = httpx.get(server.url + "/metrics").text
    for (path, body), got in zip(reqs, together):
        assert got == alone[json.dumps([path, body], sort_keys=True)], (path, body)
        assert all(isinstance(t, str) and t for t in got)
    assert len(again) == 3 * CONCURRENCY
    for path, body, got in again:
        assert got == alone[json.dumps([path, body], sort_keys=True)], (path, body)
    assert stats["errors"] == 0 and stats["rejected"] == 0
    # every request that was sent in full was answered, and none of the quitters was: each quitter that reached
    # the engine was cancelled (on a loaded machine a plain quitter may give up before its request arrives)
    assert stats["completed"] == len(alone) + 4 * len(reqs)
    assert 48 <= stats["cancelled"] <= 64
    assert stats["largest_batch"] > 8  # the load was really batched
    # nothing leaked: no slot held, nothing running or waiting
    assert "openllm_requests_running 0" in metrics and "openllm_kv_cache_slots_used 0" in metrics
    assert "openllm_requests_waiting 0" in metrics
