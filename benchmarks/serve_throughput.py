"""Throughput of ``openllm serve`` with request batching against the same server serving one request at a
time (``--max-batch 1``), at concurrency 1, 8 and 32.

The server runs in its own process (as in production, so the load generator does not share its
interpreter); the client sends every request as an OpenAI completions call with ``max_tokens`` new tokens.
By default the model is a randomly initialised model of the ``tiny`` preset (``--preset`` picks another)
with a SentencePiece tokenizer trained on this package's own source, and its EOS logit is zeroed so every
request generates exactly ``max_tokens`` tokens (equal work in both modes). ``--model`` serves a real run or
export instead.

    python benchmarks/serve_throughput.py                      # CPU, tiny preset
    python benchmarks/serve_throughput.py --device cuda --preset small

Prints requests/s and generated tokens/s per concurrency for both modes and their ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# --- the server process -----------------------------------------------------------------------------------

def build_random_model(preset: str, tok_dir: str, seed: int, device: str):
    import torch

    from openllm.config import load_config
    from openllm.model import Transformer
    from openllm.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    cfg = load_config(preset).model
    cfg.vocab_size = tok.vocab_size
    torch.manual_seed(seed)
    model = Transformer(cfg.validate())
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] = 0.0  # never picked greedily; rarely sampled
    return model.to(device).eval(), tok


def serve_main(args: argparse.Namespace) -> None:
    import torch

    from openllm.serve import create_app, run_server

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        import openllm

        loaded = openllm.load(args.model, device=args.device)
        model, tok = loaded.model, loaded.tokenizer
    else:
        model, tok = build_random_model(args.preset, args.tok, args.seed, args.device)
    if args.device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    app = create_app(model, tok, model_name="bench", max_batch=args.max_batch, max_queue=1024,
                     batch_window_ms=args.batch_window_ms)
    run_server(app, "127.0.0.1", args.port, log_level="warning")


# --- the load generator -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_bench_tokenizer(out: Path) -> Path:
    from openllm.tokenizer import train_tokenizer

    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "src" / "openllm").rglob("*.py")))
    corpus = out / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    train_tokenizer([corpus], out / "tok", vocab_size=1024, progress=False, threads=1)
    return out / "tok"


def prompts(n: int) -> list[str]:
    words = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split()
    out = []
    for i in range(n):
        start = (i * 37) % max(1, len(words) - 64)
        out.append(" ".join(words[start:start + 4 + (i * 5) % 24]))  # ragged: 4 to 27 words
    return out


class Server:
    def __init__(self, args: argparse.Namespace, tok_dir: Path | None, max_batch: int) -> None:
        self.port = free_port()
        cmd = [sys.executable, __file__, "--serve", "--port", str(self.port), "--max-batch", str(max_batch),
               "--device", args.device, "--threads", str(args.threads), "--batch-window-ms", str(args.batch_window_ms), "--preset", args.preset, "--seed", str(args.seed)]
        if args.model:
            cmd += ["--model", args.model]
        else:
            cmd += ["--tok", str(tok_dir)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("the server process exited")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(url: str, concurrency: int, n_requests: int, max_tokens: int, temperature: float) -> dict:
    import httpx

    texts = prompts(n_requests)
    todo = list(range(n_requests))
    latencies: list[float] = []
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while todo:
            i = todo.pop()
            t0 = time.perf_counter()
            r = await client.post("/v1/completions", json={"model": "bench", "prompt": texts[i],
                                                           "max_tokens": max_tokens, "temperature": temperature})
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text}")
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"rps": n_requests / wall, "tps": tokens / wall, "p50": statistics.median(latencies), "wall": wall,
            "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a run, an export or OWNER/NAME@VERSION (default: random model)")
    ap.add_argument("--preset", default="tiny", help="shape of the random model (default tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server process (default 1: steady on a shared CPU; 0: torch's default)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per concurrency level (default: max(8, 2 x concurrency))")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode and level; the best counts (default 2)")
    ap.add_argument("--max-batch", type=int, default=32, help="batch size of the batching server")
    ap.add_argument("--batch-window-ms", type=float, default=10.0, help="the batching server's window (default 10)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tok", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args)
        return

    levels = [int(c) for c in args.concurrency.split(",")]
    modes = {"batched": args.max_batch, "one-at-a-time": 1}
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = None if args.model else train_bench_tokenizer(Path(tmp))
        servers = {mode: Server(args, tok_dir, mb) for mode, mb in modes.items()}
        results: dict[str, dict[int, dict]] = {mode: {} for mode in modes}
        try:
            for mode, server in servers.items():
                server.wait()
                asyncio.run(load(server.url, 4, 8, args.max_tokens, args.temperature))  # warm-up
            # the two servers take turns at each level, and each keeps its best of --repeat runs, so a
            # machine whose load drifts does not favour whichever ran first
            for c in levels:
                n = args.requests or max(8, 2 * c)
                for rep in range(args.repeat):
                    for mode, server in servers.items():
                        r = asyncio.run(load(server.url, c, n, args.max_tokens, args.temperature))
                        print(f"  {mode:14s} concurrency {c:3d} run {rep + 1}: {n:3d} requests in {r['wall']:6.2f} s, "
                              f"{r['rps']:7.2f} req/s, {r['tps']:8.1f} tok/s, p50 latency {r['p50'] * 1000:7.1f} ms",
                              flush=True)
                        if c not in results[mode] or r["tps"] > results[mode][c]["tps"]:
                            results[mode][c] = r
        finally:
            for server in servers.values():
                server.stop()

    import torch

    print()
    print(f"openllm serve throughput: {'model ' + args.model if args.model else 'random ' + args.preset + ' preset'}, "
          f"device {args.device}, {args.max_tokens} new tokens a request, temperature {args.temperature}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, server torch threads {args.threads or 'default'}")
    print("best of", args.repeat, "runs per mode and level; the modes took turns")
    print(f"{'concurrency':>11} | {'batched req/s':>13} {'tok/s':>8} | {'one-at-a-time req/s':>19} {'tok/s':>8} | "
          f"{'ratio req/s':>11} {'ratio tok/s':>11}")
    for c in levels:
        b, s = results["batched"][c], results["one-at-a-time"][c]
        print(f"{c:>11} | {b['rps']:>13.2f} {b['tps']:>8.1f} | {s['rps']:>19.2f} {s['tps']:>8.1f} | "
              f"{b['rps'] / s['rps']:>10.2f}x {b['tps'] / s['tps']:>10.2f}x")


if __name__ == "__main__":
    main()
