"""openllm.conversations: parsing (every bad input's one-line error naming file and line), the assistant-only
loss mask through the project's chat template, packing without loss or attention crossing conversations, the
resumable loader and the synthetic set."""

from __future__ import annotations

import json

import pytest
import torch

from openllm.conversations import (
    IGNORE_INDEX,
    PackedLoader,
    attention_mask,
    encode_conversation,
    encode_conversations,
    make_synthetic_conversations,
    pack,
    parse_conversation,
    read_conversations,
)
from openllm.errors import OpenLLMError
from openllm.tokenizer import Tokenizer

CONV = {
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


@pytest.fixture(scope="module")
def tok(export_tokenizer_dir):
    return Tokenizer.load(export_tokenizer_dir)


def _write(tmp_path, lines, name="c.jsonl"):
    p = tmp_path / name
    p.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return p


def test_reads_both_shapes_and_skips_blank_lines(tmp_path):
    p = _write(tmp_path, [CONV, "", {"prompt": "Q?", "response": "A.", "system": "S"}])
    convs = read_conversations(p)
    assert [len(c.messages) for c in convs] == [5, 3]
    assert convs[1].messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
    ]
    assert convs[1].where == f"{p}:3"


@pytest.mark.parametrize(
    "line, message",
    [
        ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, 'message 1 has no "role"'),
        (
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            "unknown role 'robot'",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
            'needs "content" as a string',
        ),
        ({"messages": []}, "non-empty list"),
        ({"tools": {"name": "f"}, **CONV}, '"tools" must be a list'),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
            "arguments of the call to f are not a JSON object",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "x"}]}]}, 'needs "function" with a "name"'),
        ({"text": "hello"}, 'no "messages" list'),
        ({"prompt": "Q?"}, 'needs "response"'),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    p = _write(tmp_path, [CONV, line])
    with pytest.raises(OpenLLMError) as exc:
        read_conversations(p)
    text = str(exc.value)
    assert text.startswith(f"{p}:2: ") and message in text and "\n" not in text


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(OpenLLMError, match=r"e\.jsonl: no conversations \(the file is empty\)"):
        read_conversations(empty)
    with pytest.raises(OpenLLMError, match="no such file"):
        read_conversations(tmp_path / "nope.jsonl")


def test_mask_is_assistant_text_and_its_eos(tok):
    ex = encode_conversation(tok, parse_conversation(CONV, "x:1"))
    assert len(ex.ids) == len(ex.mask)
    assert ex.ids[0] == tok.bos_id and ex.mask[0] == 0
    masked = [i for i, m in zip(ex.ids, ex.mask) if m]
    # two assistant turns, each ending in its EOS, which is trained on
    assert [i for i, m in enumerate(ex.mask) if m and ex.ids[i] == tok.eos_id] == [
        i for i, t in enumerate(ex.ids) if t == tok.eos_id
    ]
    assert masked.count(tok.eos_id) == 2
    assert tok.decode(masked) == " Hello! 4"
    unmasked = tok.decode([i for i, m in zip(ex.ids, ex.mask) if not m])
    assert unmasked == "System: Be terse.\nUser: Hi there\nAssistant:\nUser: 2+2?\nAssistant:\n"
    # the prompt of each assistant turn is tokenized exactly as encode_chat tokenizes it for generation
    msgs = CONV["messages"]
    for last in (2, 4):
        prompt = tok.encode_chat(msgs[:last], add_generation_prompt=True)
        assert ex.ids[: len(prompt)] == prompt and ex.mask[len(prompt) - 1] == 0 and ex.mask[len(prompt)] == 1


def test_too_long_drop_truncate_error(tok):
    long = parse_conversation({"prompt": "Q?", "response": "word " * 200}, "f.jsonl:7")
    short = parse_conversation(CONV, "f.jsonl:8")
    kept, report = encode_conversations(tok, [long, short], 64)
    assert len(kept) == 1 and report.dropped == 1 and report.dropped_where == ["f.jsonl:7"]
    assert "1 longer than the context dropped (first: f.jsonl:7)" in report.summary()
    kept, report = encode_conversations(tok, [long, short], 64, too_long="truncate")
    assert [len(e) for e in kept][0] == 64 and report.truncated == 1 and report.dropped == 0
    with pytest.raises(OpenLLMError, match=r"f\.jsonl:7: \d+ tokens, longer than the context of 64"):
        encode_conversations(tok, [long, short], 64, too_long="error")


def test_packing_keeps_loss_and_attention_inside_conversations(tok):
    convs = [
        parse_conversation({"prompt": f"Question {i}?", "response": "Answer " * (i % 4 + 1)}, f"f:{i}")
        for i in range(12)
    ]
    examples, _ = encode_conversations(tok, convs, 64)
    rows = pack(examples, 64, pad_id=tok.pad_id, seed=3)
    assert len(rows) < len(examples)  # several conversations share a row
    # every conversation appears once, whole, in one row
    flat = []
    for r in range(len(rows)):
        for s in sorted(set(rows.segments[r]) - {-1}):
            flat.append(rows.ids[r][rows.segments[r] == s].tolist())
    assert sorted(flat) == sorted(e.ids for e in examples)
    assert int((rows.labels != IGNORE_INDEX).sum()) == sum(sum(e.mask) for e in examples)
    # a target at the first token of a conversation (its BOS) never counts: no loss crosses a boundary
    x, y, seg = PackedLoader(rows, len(rows), shuffle=False).batch(0)
    starts = seg[:, 1:] != seg[:, :-1]
    assert bool((y[:, :-1][starts] == IGNORE_INDEX).all())
    mask = attention_mask(seg)
    assert mask.shape == (len(rows), 1, 63, 63)
    b = int(torch.nonzero(starts.any(1))[0])
    i = int(torch.nonzero(starts[b])[0]) + 1  # first position of the second conversation in row b
    assert not bool(mask[b, 0, i, :i].any()) and bool(mask[b, 0, i, i])
    assert bool(mask[b, 0, i - 1, :i].all())  # the first conversation sees itself, causally


def test_attention_mask_isolates_conversations_in_the_model(tok):
    from openllm.config import ModelConfig
    from openllm.model import Transformer

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=128
        )
    ).eval()
    a = encode_conversation(tok, parse_conversation(CONV, "a")).ids
    b = encode_conversation(tok, parse_conversation({"prompt": "Q?", "response": "A."}, "b")).ids
    ids = torch.tensor([a + b])
    seg = torch.tensor([[0] * len(a) + [1] * len(b)])
    with torch.no_grad():
        packed = model(ids, attn_mask=attention_mask(seg))
        alone = model(torch.tensor([b]))
    assert torch.allclose(packed[0, len(a) :], alone[0], atol=1e-5)


def test_loader_is_a_pure_function_of_position(tok):
    convs = [parse_conversation({"prompt": f"Q{i}?", "response": "A" * (i + 1)}, f"f:{i}") for i in range(20)]
    rows = pack(encode_conversations(tok, convs, 32)[0], 32, seed=0)
    one = PackedLoader(rows, 2, seed=5)
    seen = [one.next() for _ in range(7)]
    two = PackedLoader(rows, 2, seed=5)
    two.load_state_dict(PackedLoader(rows, 2, seed=5).state_dict() | {"position": 4})
    for want in seen[4:]:
        got = two.next()
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    # two ranks of batch 1 see exactly the rows one process with batch 2 sees
    r0, r1 = PackedLoader(rows, 1, seed=5, rank=0, world_size=2), PackedLoader(rows, 1, seed=5, rank=1, world_size=2)
    for want in seen[:3]:
        got = torch.cat([r0.next()[0], r1.next()[0]])
        assert torch.equal(got, want[0])
    with pytest.raises(OpenLLMError, match="seed=5, this run has 6"):
        PackedLoader(rows, 2, seed=6).load_state_dict(one.state_dict())


def test_synthetic_set_is_deterministic_and_held_out(tmp_path):
    train, val = make_synthetic_conversations(60, seed=1)
    assert (len(train), len(val)) == (54, 6)
    assert (train, val) == make_synthetic_conversations(60, seed=1)
    for c in train + val:
        parse_conversation(c, "synthetic")
    asked = {m["content"] for c in train for m in c["messages"] if m["role"] == "user"}
    assert not asked & {
        m["content"]
        for c in val
        for m in c["messages"]
        if m["role"] == "user" and m["content"] != "And the next verse?"
    }
    assert any((m["content"] or "").startswith("What does ") for c in train for m in c["messages"])


# --- a synthetic set from the base run's own corpus (issue 24) ---------------------------------------------

AUSTEN = [
    f"It is a truth universally acknowledged, that a single man number {i} must be in want of a wife. "
    f"However little known the feelings of man {i} may be, this truth is well fixed in the minds of families. "
    f"On day {i} Mrs. Bennet said so at breakfast, and Mr. Bennet made answer {i * 7}."
    for i in range(120)
]


@pytest.fixture(scope="module")
def austen_run(tmp_path_factory, export_tokenizer_dir):
    """A run folder whose checkpoint records the tokenized corpus it trained on (a novel, not the Bible)."""
    from conftest import make_export_run
    from openllm.prepare import prepare_corpus
    from openllm.shards import tokenize_corpus

    root = tmp_path_factory.mktemp("austen")
    (root / "novel.txt").write_text("\n\n".join(AUSTEN), encoding="utf-8")
    prepare_corpus([root / "novel.txt"], root / "prepared", progress=False, val_fraction=0.1)
    tokenize_corpus(root / "prepared", export_tokenizer_dir, root / "tokens", workers=1, progress=False)
    run = make_export_run(root / "run", export_tokenizer_dir, steps=(1,))
    state_path = run / "checkpoints" / "step_00000001" / "state.json"
    state = json.loads(state_path.read_text())
    state["data_dir"] = str(root / "tokens")
    state_path.write_text(json.dumps(state))
    return run


def test_synthetic_set_from_the_runs_own_corpus(austen_run, tmp_path):
    from openllm.conversations import write_synthetic_set

    about = write_synthetic_set(tmp_path / "conv", 80, source=austen_run)
    train = read_conversations(tmp_path / "conv" / "train.jsonl")
    val = read_conversations(tmp_path / "conv" / "val.jsonl")
    assert (len(train), len(val)) == (72, 8)
    text = " ".join(AUSTEN)
    replies = [m["content"] for c in train + val for m in c.messages if m["role"] == "assistant"]
    assert all(r and r in text for r in replies)  # every answer is copied from the run's corpus
    assert not any("Bible" in m["content"] or "verse" in m["content"].lower() for c in train for m in c.messages)
    assert "Bible" not in about["note"] and about["source"]["data_dir"].endswith("tokens")
    assert about["source"]["documents"] == 120
    # split by document: no held-out passage is asked in training
    asked = {m["content"] for c in train for m in c.messages if m["role"] == "user"}
    held = {m["content"] for c in val for m in c.messages if m["role"] == "user" and len(m["content"]) > 20}
    assert not asked & held, sorted(asked & held)
    assert write_synthetic_set(tmp_path / "again", 80, source=austen_run)["files"] == about["files"]


def test_synthetic_set_needs_a_run_with_its_corpus(tmp_path, export_run):
    from openllm.conversations import write_synthetic_set

    with pytest.raises(OpenLLMError, match="corpus"):
        write_synthetic_set(tmp_path / "conv", 20, source=export_run)  # its checkpoint records no data_dir
    assert not (tmp_path / "conv").exists()


@pytest.mark.parametrize("kind", ["prepared corpus", "run folder", "foreign folder", "file"])
def test_synthetic_set_refuses_a_folder_it_did_not_write(tmp_path, request, kind):
    from openllm.conversations import write_synthetic_set

    out = tmp_path / "out"
    if kind == "prepared corpus":
        out.mkdir()
        for name in ("train.jsonl", "val.jsonl", "report.json"):
            (out / name).write_text('{"text": "x"}\n')
    elif kind == "run folder":
        out = request.getfixturevalue("export_run")  # built only for the case that needs it
    elif kind == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("mine")
    before = (
        {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} if out.is_dir() else out.read_bytes()
    )
    with pytest.raises(OpenLLMError, match=str(out.name)):
        write_synthetic_set(out, 20)
    after = (
        {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} if out.is_dir() else out.read_bytes()
    )
    assert before == after


def test_synthetic_set_replaces_its_own_earlier_output_whole(tmp_path):
    from openllm.conversations import write_synthetic_set

    write_synthetic_set(tmp_path / "mine", 20)
    (tmp_path / "mine" / "train.jsonl").write_text("")
    write_synthetic_set(tmp_path / "mine", 20)
    assert len(read_conversations(tmp_path / "mine" / "train.jsonl")) == 18


@pytest.mark.slow
def test_make_data_cli_uses_the_models_corpus(austen_run, tmp_path):
    from conftest import run_cli

    res = run_cli("finetune", str(austen_run), "--make-data", str(tmp_path / "made"), "--conversations", "20")
    about = json.loads((tmp_path / "made" / "about.json").read_text())
    assert about["split"] == "by document" and "train.jsonl (18)" in res.stdout
    assert "corpus the base run trained on" in res.stdout and "Bible" not in res.stdout
    # over a folder it did not write, nothing is written
    res = run_cli("finetune", str(austen_run), "--make-data", str(austen_run), check=False)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1


def test_an_empty_reply_is_not_an_ended_turn(tok, monkeypatch):
    """EOS as the first token is no answer: the report counts it as empty, not as a turn that ended (issue 24:
    2 of 3 replies were empty while the report said 67% ended their turn)."""
    import openllm.generate
    from openllm.conversations import Conversation
    from openllm.evaluate.chat import chat_samples

    replies = iter([[tok.eos_id], tok.encode("Hello") + [tok.eos_id], tok.encode("Hello")])
    monkeypatch.setattr(openllm.generate, "generate", lambda model, prompts, params: [next(replies)])

    class Model:
        class cfg:
            max_seq_len = 512

    convs = [Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])] * 3
    out = chat_samples(Model(), tok, convs, n=3)
    assert [(s["ended_turn"], s["empty"]) for s in out] == [(False, True), (True, False), (False, False)]


def test_synthetic_set_has_a_tool_use_part_the_model_learns_to_call_in(tok):
    """About a fifth of the verse set offers a function; its calls are OpenAI-shaped, their arguments match the
    function's schema, the tool's result is the corpus's text, and the loss mask covers the call (the model
    learns to write it) but not the function list or the tool's result."""
    import jsonschema

    train, val = make_synthetic_conversations(200, seed=2)
    with_tools = [c for c in train + val if c.get("tools")]
    assert 0.1 < len(with_tools) / 200 < 0.3
    calls = [m for c in with_tools for m in c["messages"] if m.get("tool_calls")]
    assert {m["tool_calls"][0]["function"]["name"] for m in calls} == {"get_verse", "count_verses"}
    assert any(not any(m.get("tool_calls") for m in c["messages"]) for c in with_tools)  # answered without it
    for c in with_tools:
        conv = parse_conversation(c, "synthetic")
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in c["tools"]}
        for m in c["messages"]:
            for call in m.get("tool_calls", []):
                jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        ex = encode_conversation(tok, conv)
        learned = tok.decode([i for i, m in zip(ex.ids, ex.mask) if m])
        given = tok.decode([i for i, m in zip(ex.ids, ex.mask) if not m])
        assert "Function:" in given and "Function:" not in learned
        if any(m.get("tool_calls") for m in c["messages"]):
            assert "<tool_call>" in learned and "<tool_call>" not in given
            assert "Tool: " + c["messages"][2]["content"] in given
