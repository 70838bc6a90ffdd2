"""``openllm serve`` compared on one workload: continuous batching (sequences join and leave the running batch
at every step), static batching (a batch runs to its end before the next starts: ``--batching static``), one
sequence at a time (``--max-batch 1``), continuous batching without prefix caching (``--no-prefix-caching``),
and the servers a user could pick instead: llama.cpp's (llama-cpp-python's ``python -m llama_cpp.server`` on
our own GGUF export, f32) and transformers' (``transformers serve``), at concurrency 1, 8 and 32.

Two workloads (``--workload``): ``mixed`` (independent requests, below) and ``chat`` (``--conversations``
conversations of ``--turns`` turns that share a system prompt; each conversation is one client that sends its
next turn, the whole chat so far, when the previous reply is in; ``--concurrency`` conversations at once):
prefix caching's case.

Each server runs in its own process (as in production, so the load generator does not share its
interpreter). The workload is the same for every server: prompts of 16-200 tokens (sent as token ids) and
``max_tokens`` of 16-128, drawn once from ``--seed``; at each level ``concurrency`` clients send them, each
waiting an exponential gap (mean ``--gap-ms``) before its next request, so arrivals are Poisson-like. Every
request streams, which times the first token. By default the model is a randomly initialised model of the
``tiny`` preset with a 512-token context and a SentencePiece tokenizer trained on this package's own source;
its EOS logit is zeroed and decoding is greedy, so each request generates exactly ``max_tokens`` tokens (equal
work for every server). ``--model`` serves a real run or export instead.

    python benchmarks/serve_throughput.py                      # CPU, tiny preset
    python benchmarks/serve_throughput.py --device cuda --preset small
    python benchmarks/serve_throughput.py --modes continuous,llama.cpp --concurrency 1,8,32
    python benchmarks/serve_throughput.py --workload chat --modes continuous,no-prefix-cache --concurrency 1,16

Prints, per server and level: generated tokens/s, time to first token p50/p99, per-token latency p50/p99 and
request latency p50/p95, then continuous's ratios to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# --- the server process -----------------------------------------------------------------------------------


def export_random_model(preset: str, tok_dir: Path, seed: int, max_seq_len: int, out: Path) -> Path:
    """A randomly initialised model of ``preset`` with the benchmark tokenizer, as a Hugging Face export (every
    server loads the same folder). Its head is untied and EOS's row zeroed: greedy decoding never ends early."""
    import torch

    from openllm.config import load_config
    from openllm.export.hf import export_hf
    from openllm.loading import LoadedModel
    from openllm.model import Transformer
    from openllm.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    config = load_config(preset)
    cfg = config.model
    cfg.vocab_size = tok.vocab_size
    cfg.max_seq_len = max(cfg.max_seq_len, max_seq_len)
    cfg.tie_embeddings = False
    torch.manual_seed(seed)
    model = Transformer(cfg.validate()).eval()
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] = 0.0
    loaded = LoadedModel(
        model=model,
        tokenizer=tok,
        config=config,
        source="benchmark",
        path=tok_dir,
        kind="native",
        tokenizer_dir=tok_dir,
    )
    return export_hf(loaded, out)


def serve_main(args: argparse.Namespace) -> None:
    import torch

    from openllm.serve import create_app, run_server

    if args.threads:
        torch.set_num_threads(args.threads)
    import openllm

    loaded = openllm.load(args.model, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    if args.device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    app = create_app(
        model,
        tok,
        model_name="bench",
        max_batch=args.max_batch,
        max_queue=4096,
        batching=args.batching,
        prefill_chunk=args.prefill_chunk,
        prefix_caching=not args.no_prefix_caching,
    )
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


def workload(n: int, seed: int, tok) -> list[tuple[str, int]]:
    """``n`` (prompt, max_tokens): prompts of 16-200 tokens (random token ids, sent as their text, so every
    server can take them), 16-128 new tokens."""
    rng = random.Random(seed)
    return [
        (tok.decode([rng.randrange(4, tok.vocab_size) for _ in range(rng.randint(16, 200))]), rng.randint(16, 128))
        for _ in range(n)
    ]


class Server:
    """One server process: ours (a ``mode`` of :data:`MODES`), llama.cpp's or transformers' own."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, mode: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if mode == "llama.cpp":
            cmd = [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf_of(model_dir)),
                "--model_alias",
                "bench",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                str(args.max_seq_len),
                "--n_threads",
                str(args.threads or os.cpu_count()),
                "--n_threads_batch",
                str(args.threads or os.cpu_count()),
                # its default cancels the running request whenever another arrives: queue them instead
                "--interrupt_requests",
                "False",
            ]
            self.model_name = "bench"
        elif mode == "transformers":
            exe = Path(sys.executable).with_name("transformers")
            cmd = [
                str(exe),
                "serve",
                "--continuous-batching",
                "--device",
                args.device,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                str(model_dir),
            ]
            self.model_name = str(model_dir)
            if args.device.startswith("cuda"):
                cmd[2:2] = ["--dtype", "bfloat16"]  # as our servers run on CUDA
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            env.update(
                {
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                    "DO_NOT_TRACK": "1",
                }
            )
        else:
            batching, max_batch, prefix_caching = MODES[mode]
            cmd = [
                sys.executable,
                __file__,
                "--serve",
                "--port",
                str(self.port),
                "--max-batch",
                str(max_batch or args.max_batch),
                "--batching",
                batching,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--prefill-chunk",
                str(args.prefill_chunk),
                "--model",
                str(model_dir),
                *([] if prefix_caching else ["--no-prefix-caching"]),
            ]
            self.model_name = "bench"
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL if mode in ("transformers", "llama.cpp") else None,
            stderr=subprocess.DEVNULL if mode in ("transformers", "llama.cpp") else None,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the server process and every process under it (transformers serve
        generates in a child process), read from /proc (Linux), or NaN elsewhere."""
        try:
            stats = {}
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    try:
                        fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    stats[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            tree, todo = set(), [self.proc.pid]
            while todo:
                pid = todo.pop()
                tree.add(pid)
                todo += [p for p, (ppid, _) in stats.items() if ppid == pid and p not in tree]
            return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def wait(self, timeout: float = 240) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("the server process exited")
            try:
                # /v1/models: llama.cpp's python server has no /health; ours answers 503 there until loaded
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


async def stream_completion(client, body: dict) -> tuple[float | None, int, str]:
    """One streamed completion: when its first text arrived (perf_counter), its tokens and its text."""
    first, n, pieces, text = None, 0, 0, ""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {await r.aread()}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["finish_reason"] is None:
                pieces += 1  # a chunk a token: what counts for a server that sends no usage (llama.cpp)
                if event["choices"][0]["text"]:
                    first = first or time.perf_counter()
                    text += event["choices"][0]["text"]
    return first, n or pieces, text


async def load(server: Server, concurrency: int, work: list[tuple[str, int]], gap_s: float, seed: int) -> dict:
    import httpx

    todo = list(range(len(work)))[::-1]
    rng = random.Random(seed)
    ttft: list[float] = []
    tpot: list[float] = []
    latency: list[float] = []
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while todo:
            await asyncio.sleep(rng.expovariate(1 / gap_s) if gap_s > 0 else 0)
            if not todo:
                return
            prompt, max_tokens = work[todo.pop()]
            t0 = time.perf_counter()
            body = {
                "model": server.model_name,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            first, n, _ = await stream_completion(client, body)
            end = time.perf_counter()
            first = first or end
            ttft.append(first - t0)
            latency.append(end - t0)
            if n > 1:
                tpot.append((end - first) / (n - 1))
            tokens += n

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=1800, limits=limits) as client:
        start, cpu = time.perf_counter(), server.cpu_seconds()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, server.cpu_seconds() - cpu
    return {
        "tps": tokens / wall,
        "wall": wall,
        "tokens": tokens,
        "n": len(work),
        "cpu_ms": cpu / max(tokens, 1) * 1e3,
        "ttft50": pct(ttft, 50),
        "ttft99": pct(ttft, 99),
        "tpot50": pct(tpot, 50),
        "tpot99": pct(tpot, 99),
        "lat50": pct(latency, 50),
        "lat95": pct(latency, 95),
    }


# our servers: mode -> (--batching, --max-batch (None: the benchmark's), prefix caching)
MODES = {
    "continuous": ("continuous", None, True),
    "static": ("static", None, True),
    "one-at-a-time": ("continuous", 1, True),
    "no-prefix-cache": ("continuous", None, False),
}


def gguf_of(model_dir: Path) -> Path:
    """Our GGUF export (f32, as our server computes) of the Hugging Face export ``model_dir``, made once."""
    out = model_dir.parent / "gguf"
    if not out.exists():
        from openllm.export import export

        export(str(model_dir), out, "gguf", progress=False)
    return next(out.glob("*.gguf"))


def chat_workload(conversations: int, turns: int, seed: int, tok) -> list[list[tuple[str, int]]]:
    """Per conversation, its turns as (user message, max_tokens); the system prompt is :func:`system_prompt`."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return tok.decode([rng.randrange(4, tok.vocab_size) for _ in range(n)])

    return [[(text(rng.randint(10, 30)), rng.randint(16, 32)) for _ in range(turns)] for _ in range(conversations)]


def system_prompt(tok, seed: int) -> str:
    rng = random.Random(seed)
    return tok.decode([rng.randrange(4, tok.vocab_size) for _ in range(120)])


async def chat_load(server: Server, concurrency: int, convs: list, system: str, seed: int) -> dict:
    """Each conversation is one client: turn after turn, the whole chat so far as a completions prompt (the
    project's chat template, so every server reads the same text), the reply appended for the next turn."""
    import httpx

    from openllm.tokenizer import apply_chat_template

    todo = list(range(len(convs)))[::-1]
    ttft: list[float] = []
    latency: list[float] = []
    tokens = 0

    async def conversation(client: httpx.AsyncClient, turns: list[tuple[str, int]]) -> None:
        nonlocal tokens
        messages = [{"role": "system", "content": system}]
        for user, max_tokens in turns:
            messages.append({"role": "user", "content": user})
            prompt = apply_chat_template(messages, add_generation_prompt=True)
            body = {
                "model": server.model_name,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            t0 = time.perf_counter()
            first, n, reply = await stream_completion(client, body)
            end = time.perf_counter()
            ttft.append((first or end) - t0)
            latency.append(end - t0)
            tokens += n
            messages.append({"role": "assistant", "content": reply.strip()})

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            await conversation(client, convs[todo.pop()])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=1800, limits=limits) as client:
        start, cpu = time.perf_counter(), server.cpu_seconds()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, server.cpu_seconds() - cpu
    return {
        "tps": tokens / wall,
        "wall": wall,
        "tokens": tokens,
        "n": len(ttft),
        "cpu_ms": cpu / max(tokens, 1) * 1e3,
        "ttft50": pct(ttft, 50),
        "ttft99": pct(ttft, 99),
        "tpot50": float("nan"),
        "tpot99": float("nan"),
        "lat50": pct(latency, 50),
        "lat95": pct(latency, 95),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default=None, help="a Hugging Face export folder to serve (default: a random model of --preset)"
    )
    ap.add_argument("--preset", default="tiny", help="shape of the random model (default tiny)")
    ap.add_argument("--max-seq-len", type=int, default=512, help="context of the random model (default 512)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each server process (default 1: steady on a shared CPU; 0: torch's default)",
    )
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--workload", choices=["mixed", "chat"], default="mixed")
    ap.add_argument("--conversations", type=int, default=32, help="chat workload: conversations (default 32)")
    ap.add_argument("--turns", type=int, default=4, help="chat workload: turns per conversation (default 4)")
    ap.add_argument(
        "--requests", type=int, default=0, help="requests per concurrency level (default: max(12, 2 x concurrency))"
    )
    ap.add_argument("--gap-ms", type=float, default=20.0, help="mean pause of a client between requests (default 20)")
    ap.add_argument(
        "--modes",
        default="continuous,static,one-at-a-time",
        help=f"servers to compare: {', '.join(MODES)}, llama.cpp (llama-cpp-python's server on our GGUF export), "
        f"transformers (transformers serve --continuous-batching) (default continuous,static,one-at-a-time)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per server and level, the servers taking turns; the fastest counts (default 2)",
    )
    ap.add_argument("--max-batch", type=int, default=32, help="batch size of the batching servers (default 32)")
    ap.add_argument("--prefill-chunk", type=int, default=256)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batching", default="continuous", help=argparse.SUPPRESS)
    ap.add_argument("--no-prefix-caching", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args)
        return

    from openllm.tokenizer import Tokenizer

    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = Path(args.model)
        else:
            tok_dir = train_bench_tokenizer(Path(tmp))
            model_dir = export_random_model(args.preset, tok_dir, args.seed, args.max_seq_len, Path(tmp) / "hf")
        tok = Tokenizer.load(model_dir)
        servers = {m: Server(args, model_dir, m) for m in modes}
        results: dict[str, dict[int, dict]] = {m: {} for m in modes}
        try:
            for mode, server in list(servers.items()):
                try:
                    server.wait()
                except SystemExit as exc:  # a peer that cannot run here is left out, not the whole comparison
                    print(f"  {mode}: {exc}; left out", flush=True)
                    server.stop()
                    del servers[mode], results[mode]
                    modes.remove(mode)
                    continue
                asyncio.run(load(server, 4, workload(8, args.seed + 999, tok), 0, 0))  # warm-up
            # the servers take turns at each level on the same requests, so a machine whose load drifts
            # favours none of them in particular
            system = system_prompt(tok, args.seed)
            for c in levels:
                work = workload(args.requests or max(12, 2 * c), args.seed + c, tok)
                convs = chat_workload(args.conversations, args.turns, args.seed + c, tok)
                for rep in range(args.repeat):
                    for mode, server in servers.items():
                        if args.workload == "chat":
                            r = asyncio.run(chat_load(server, c, convs, system, args.seed + rep))
                        else:
                            r = asyncio.run(load(server, c, work, args.gap_ms / 1000, args.seed + rep))
                        print(
                            f"  {mode:14s} concurrency {c:3d} run {rep + 1}: {r['n']:3d} requests, {r['tokens']:5d} "
                            f"tokens in {r['wall']:6.1f} s, {r['tps']:7.1f} tok/s, "
                            f"server CPU {r['cpu_ms']:.2f} ms/token",
                            flush=True,
                        )
                        if c not in results[mode] or r["tps"] > results[mode][c]["tps"]:
                            results[mode][c] = r
        finally:
            for server in servers.values():
                server.stop()

    import torch

    print()
    what = (
        f"chat workload ({args.conversations} conversations x {args.turns} turns after a shared 120-token system "
        f"prompt, user turns 10-30 tokens, replies 16-32 tokens, greedy)"
        if args.workload == "chat"
        else f"mixed workload (prompts 16-200 tokens, max_tokens 16-128, greedy, Poisson-like arrivals, "
        f"mean gap {args.gap_ms:g} ms)"
    )
    print(
        f"{what}: "
        f"{'model ' + args.model if args.model else 'random ' + args.preset + ' preset'}, "
        f"device {args.device}, torch {torch.__version__}, {os.cpu_count()} CPUs, server torch threads "
        f"{args.threads or 'default'}, --max-batch {args.max_batch}; fastest of {args.repeat} runs"
    )
    print(
        f"{'server':>14} {'conc.':>5} | {'tok/s':>7} {'CPU ms/tok':>10} | {'TTFT p50':>9} {'p99':>8} | "
        f"{'per-token p50':>13} {'p99':>8} | {'latency p50':>11} {'p95':>7}"
    )
    for c in levels:
        for mode in modes:
            r = results[mode][c]
            print(
                f"{mode:>14} {c:>5} | {r['tps']:>7.1f} {r['cpu_ms']:>10.2f} | {r['ttft50'] * 1e3:>7.0f}ms "
                f"{r['ttft99'] * 1e3:>6.0f}ms | {r['tpot50'] * 1e3:>11.1f}ms {r['tpot99'] * 1e3:>6.1f}ms | "
                f"{r['lat50']:>10.2f}s {r['lat95']:>6.2f}s"
            )
    if "continuous" in modes:
        print()
        print("continuous vs the others (tok/s ratio; TTFT p50 and p99 ratios, below 1 is better for continuous):")
        for c in levels:
            cont = results["continuous"][c]
            parts = [
                f"vs {m}: {cont['tps'] / results[m][c]['tps']:.2f}x tok/s, "
                f"TTFT p50 {cont['ttft50'] / results[m][c]['ttft50']:.2f}x, "
                f"p99 {cont['ttft99'] / results[m][c]['ttft99']:.2f}x"
                for m in modes
                if m != "continuous"
            ]
            print(f"  concurrency {c:>3}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
