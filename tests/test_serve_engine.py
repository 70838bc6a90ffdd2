"""The serve engine on a tiny model built here: continuous batching (a request that arrives while another
decodes starts and finishes before it), outputs equal to the same request served alone (greedy, seeded
sampling, chunked prefill), the slotted KV cache's limits, cancellation freeing slots, and the static policy."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from openllm.config import ModelConfig
from openllm.errors import OpenLLMError
from openllm.generate import SamplingParams, generate
from openllm.kvcache import SlotCache
from openllm.model import Transformer
from openllm.serve import Engine, Job, Seq

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, EOS = 96, 10_000  # an EOS id the model cannot produce: lengths are predictable


class ByteTok:
    """A tokenizer over token ids as characters (enough for the engine's text handling)."""

    eos_id = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(32 + i) for i in ids)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256))
    return m.eval()


class Recorder:
    """Events of several jobs in the order the engine sent them."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.log: list[tuple] = []

    def job(self, name: str, seqs: list[Seq], sampling: SamplingParams | None = None, stream: bool = True) -> Job:
        return Job(
            seqs=seqs,
            sampling=sampling or SamplingParams(temperature=0),
            stream=stream,
            emit=lambda e: self.events.put((name, e)),
        )

    def wait(self, pred, timeout: float = 30.0) -> tuple:
        deadline = time.monotonic() + timeout
        while True:
            item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            self.log.append(item)
            if pred(item):
                return item

    def finishes(self, names) -> dict:
        out = {}
        while set(out) != set(names):
            name, e = self.wait(lambda it: it[1][0] in ("finish", "error"))
            assert e[0] == "finish", e
            out[name] = e
        return out


def prompt(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (n,), generator=g).tolist()


def alone(model, p: list[int], n: int, **engine_options) -> dict:
    engine = Engine(model, ByteTok(), **engine_options).start()
    try:
        rec = Recorder()
        engine.submit(rec.job("x", [Seq(prompt=p, max_new=n, logprobs=0)], stream=False))
        return rec.finishes(["x"])["x"]
    finally:
        engine.stop()


def ids_of(finish_event) -> list[int]:
    return [tok for tok, _, _ in finish_event[5]["tokens"]]


def test_the_forward_over_slots_equals_the_plain_forward(model):
    cache = SlotCache(model.cfg, 3, 64, device="cpu", dtype=torch.float32)
    a, b = prompt(1, 20), prompt(2, 9)
    full_a, full_b = model(torch.tensor([a])), model(torch.tensor([b]))
    (sa, _), (sb, _) = cache.allocate(), cache.allocate()
    with torch.no_grad():
        got_a = model(torch.tensor([a[:12]]), cache=cache.rows([sa]))
        got_a2 = model(torch.tensor([a[12:19]]), cache=cache.rows([sa]))
        model(torch.tensor([b[:8]]), cache=cache.rows([sb]), last_only=True)
        both = model(torch.tensor([[a[19]], [b[8]]]), cache=cache.rows([sa, sb]))
    torch.testing.assert_close(got_a[0], full_a[0, :12])
    torch.testing.assert_close(got_a2[0], full_a[0, 12:19])
    torch.testing.assert_close(both[0, 0], full_a[0, 19])
    torch.testing.assert_close(both[1, 0], full_b[0, 8])
    assert cache.lengths[sa] == 20 and cache.lengths[sb] == 9 and cache.used == 2


def test_served_alone_equals_the_librarys_greedy_generation(model):
    p = prompt(3, 17)
    want = generate(model, [p], SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert ids_of(alone(model, p, 12)) == want
    # a prompt read 5 tokens a step gives the same tokens
    assert ids_of(alone(model, p, 12, prefill_chunk=5)) == want


def test_a_request_arriving_mid_decode_joins_and_finishes_first(model):
    engine = Engine(model, ByteTok(), max_batch=4, prefill_chunk=8).start()
    rec = Recorder()
    long_p, short_p = prompt(4, 30), prompt(5, 40)
    try:
        engine.submit(rec.job("long", [Seq(prompt=long_p, max_new=150, logprobs=0)]))
        # the long request is decoding (it has streamed text) before the short one is sent
        rec.wait(lambda it: it[0] == "long" and it[1][0] == "delta")
        engine.submit(rec.job("short", [Seq(prompt=short_p, max_new=4, logprobs=0)]))
        done = rec.finishes(["long", "short"])
    finally:
        engine.stop()
    order = [(name, e[0]) for name, e in rec.log]
    first_short = order.index(("short", "delta"))
    # the short request started and finished while the long one kept generating around it
    assert ("long", "delta") in order[first_short + 1 :]
    assert order.index(("short", "finish")) < order.index(("long", "finish"))
    assert engine.stats["largest_batch"] == 2
    # and each got exactly what it gets alone
    assert ids_of(done["long"]) == ids_of(alone(model, long_p, 150))
    assert ids_of(done["short"]) == ids_of(alone(model, short_p, 4))


def test_static_policy_makes_a_newcomer_wait_for_the_batch(model):
    engine = Engine(model, ByteTok(), max_batch=4, policy="static").start()
    rec = Recorder()
    try:
        engine.submit(rec.job("long", [Seq(prompt=prompt(4, 30), max_new=60)]))
        rec.wait(lambda it: it[0] == "long" and it[1][0] == "delta")
        engine.submit(rec.job("short", [Seq(prompt=prompt(5, 40), max_new=4)]))
        rec.finishes(["long", "short"])
    finally:
        engine.stop()
    order = [(name, e[0]) for name, e in rec.log]
    assert order.index(("long", "finish")) < order.index(("short", "delta"))


def test_many_staggered_requests_each_equal_alone_greedy_and_seeded(model):
    specs = [(prompt(10 + i, 5 + 13 * i % 70), 5 + (7 * i) % 30, i % 3 == 0) for i in range(10)]

    def sampling(sampled: bool, i: int) -> SamplingParams:
        return (
            SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=1000 + i)
            if sampled
            else SamplingParams(temperature=0)
        )

    solo = []
    for i, (p, n, sampled) in enumerate(specs):
        engine = Engine(model, ByteTok(), max_batch=1).start()
        rec = Recorder()
        engine.submit(rec.job("x", [Seq(prompt=p, max_new=n, logprobs=0)], sampling(sampled, i), stream=False))
        solo.append(ids_of(rec.finishes(["x"])["x"]))
        engine.stop()
    engine = Engine(model, ByteTok(), max_batch=4, prefill_chunk=16).start()  # fewer slots than requests
    rec = Recorder()
    try:
        for i, (p, n, sampled) in enumerate(specs):
            engine.submit(rec.job(str(i), [Seq(prompt=p, max_new=n, logprobs=0)], sampling(sampled, i)))
            if i % 3 == 1:
                rec.wait(lambda it: it[1][0] == "delta")  # let some arrive while others decode
        done = rec.finishes([str(i) for i in range(len(specs))])
    finally:
        engine.stop()
    for i in range(len(specs)):
        assert ids_of(done[str(i)]) == solo[i], i
    assert engine.cache.used == 0


def test_seeded_choices_differ_and_repeat(model):
    engine = Engine(model, ByteTok()).start()
    try:

        def run(seed):
            rec = Recorder()
            seqs = [Seq(prompt=prompt(7, 10), max_new=12, index=j, logprobs=0) for j in range(3)]
            engine.submit(rec.job("x", seqs, SamplingParams(temperature=1.0, seed=seed), stream=False))
            got = {}
            while len(got) < 3:
                _, e = rec.wait(lambda it: it[1][0] == "finish")
                got[e[1]] = ids_of(e)
            return [got[j] for j in range(3)]

        a, b, c = run(5), run(5), run(6)
    finally:
        engine.stop()
    assert a == b and a != c and len({tuple(x) for x in a}) == 3


def test_cancel_frees_the_slot_at_once(model):
    engine = Engine(model, ByteTok(), max_batch=1).start()
    rec = Recorder()
    try:
        job = rec.job("a", [Seq(prompt=prompt(8, 10), max_new=200)])
        engine.submit(job)
        rec.wait(lambda it: it[1][0] == "delta")
        engine.submit(rec.job("b", [Seq(prompt=prompt(9, 10), max_new=3)]))  # waits for the only slot
        job.cancel()
        done = rec.finishes(["a", "b"])
    finally:
        engine.stop()
    assert done["a"][2] == "cancelled" and done["a"][3] < 200
    assert done["b"][2] == "length" and engine.stats["cancelled"] == 1 and engine.cache.used == 0


def test_kv_cache_limits_are_clear(model):
    engine = Engine(model, ByteTok(), max_batch=4, kv_cache_tokens=200)
    assert engine.context == 50 and engine.cache.slots == 4
    with pytest.raises(ValueError, match="50 tokens"):
        engine.submit(Job(seqs=[Seq(prompt=prompt(1, 40), max_new=20)]))
    with pytest.raises(OpenLLMError, match="at least 8"):
        Engine(model, ByteTok(), max_batch=4, kv_cache_tokens=7)
    with pytest.raises(OpenLLMError, match="static"):
        Engine(model, ByteTok(), policy="dynamic")


def _conversation_turns(n_turns: int, system: list[int], seed: int) -> list[list[int]]:
    """Prompts of a chat that grows turn by turn after a shared system prompt."""
    turns, history = [], list(system)
    for t in range(n_turns):
        history = history + prompt(seed * 10 + t, 7)
        turns.append(list(history))
        history = history + prompt(seed * 10 + t + 5, 5)  # the reply, as the client sends it back
    return turns


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_prefix_caching_changes_no_output_and_reuses_the_shared_prefix(model, sampled):
    system = prompt(99, 40)
    convs = [_conversation_turns(3, system, seed) for seed in range(4)]

    def serve(prefix_caching: bool):
        engine = Engine(model, ByteTok(), max_batch=3, prefill_chunk=24, prefix_caching=prefix_caching).start()
        rec, outs = Recorder(), {}
        try:
            for turn in range(3):  # the conversations' turns arrive together, one round after another
                for c, conv in enumerate(convs):
                    sp = (
                        SamplingParams(temperature=0.9, top_p=0.9, seed=c) if sampled else SamplingParams(temperature=0)
                    )
                    job = rec.job(f"{c}/{turn}", [Seq(prompt=conv[turn], max_new=6, logprobs=0)], sp, stream=False)
                    engine.submit(job)
                for name, e in rec.finishes([f"{c}/{turn}" for c in range(len(convs))]).items():
                    outs[name] = ids_of(e)
        finally:
            engine.stop()
        return outs, engine.cache.hits

    cached, hits = serve(True)
    plain, no_hits = serve(False)
    assert cached == plain and no_hits == 0
    # every prompt shares at least the 40-token system prompt's two whole blocks, but the first round's first
    # three start together (max_batch 3), before any of them has written its keys and values
    assert hits >= 32 * (len(convs) * 3 - 3)


def test_a_prefix_is_copied_from_a_running_slot(model):
    cache = SlotCache(model.cfg, 3, 64, device="cpu", dtype=torch.float32, prefix_block=4)
    a = prompt(1, 20)
    full = model(torch.tensor([a[:12] + [5, 6, 7]]))
    with torch.no_grad():
        sa, reuse = cache.allocate(a)
        assert reuse == 0
        model(torch.tensor([a[:18]]), cache=cache.rows([sa], [a[:18]]))
        sb, reuse = cache.allocate(a[:12] + [5, 6, 7])  # slot a is still running: its first 12 are copied
        assert sb != sa and reuse == 12 and cache.lengths[sb] == 12
        got = model(torch.tensor([[5, 6, 7]]), cache=cache.rows([sb], [[5, 6, 7]]))
    torch.testing.assert_close(got[0], full[0, 12:])


def test_a_request_that_cannot_start_fails_alone(model):
    """A grammar this tokenizer cannot serve (ByteTok has no tokenizers JSON) fails its own request when it is
    admitted; the scheduler lives on and the next request is answered (an exception there stopped it)."""
    engine = Engine(model, ByteTok(), max_batch=2).start()
    rec = Recorder()
    try:
        engine.submit(rec.job("bad", [Seq(prompt=prompt(1, 5), max_new=4, grammar='start: "x"')]))
        name, event = rec.wait(lambda it: it[1][0] in ("error", "finish"))
        assert (name, event[0]) == ("bad", "error") and "OpenLLM tokenizer" in event[1]
        engine.submit(rec.job("good", [Seq(prompt=prompt(2, 5), max_new=4)]))
        assert rec.finishes(["good"])["good"][2] == "length"
    finally:
        engine.stop()
    assert engine.cache.used == 0
