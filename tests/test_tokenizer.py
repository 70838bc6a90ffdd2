import json
import re

import pytest

from conftest import run_cli
from openllm.errors import OpenLLMError
from openllm.tokenizer import Tokenizer, train_tokenizer

# a small real text: Tiny Shakespeare-like lines are in shared data; this keeps the fast tests self-contained
PROSE = """In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep.
And the Spirit of God moved upon the face of the waters.
And God said, Let there be light: and there was light.
And God saw the light, that it was good: and God divided the light from the darkness.
And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.
"""

TRICKY = [
    "  leading spaces\n\nand  double  spaces\t tabs",
    "café naïve 日本語 😀 Ελληνικά — “quotes” 12345 3.14",
    "<|user|> hello<|user|>x",
    " ",
    "",
    "a",
    "\n\n\n",
    "trailing space ",
]


@pytest.fixture(scope="module")
def small_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(PROSE * 20, encoding="utf-8")
    return train_tokenizer(
        [d / "a.txt"],
        tmp_path_factory.mktemp("tok"),
        vocab_size=400,
        user_tokens=["<|user|>", "<|end|>"],
        progress=False,
    )


def test_special_ids_user_tokens_and_files(small_tok):
    tok = small_tok
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(6)] == ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|end|>"]
    assert tok.vocab_size == 400 and len(tok) == 400
    assert tok.encode("<|user|>") == [4]
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok.dir / name).is_file()
    import hashlib

    assert tok.sha256 == hashlib.sha256((tok.dir / "tokenizer.model").read_bytes()).hexdigest()
    assert json.loads((tok.dir / "special_tokens_map.json").read_text())["eos_token"] == "</s>"


def test_encode_decode_roundtrip_is_lossless(small_tok):
    tok = small_tok
    for text in TRICKY + [PROSE]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("And God said", bos=True, eos=True)
    assert ids[0] == 2 and ids[-1] == 3
    assert tok.decode(ids) == "And God said"
    # characters never seen in training fall back to bytes, not <unk>
    assert tok.unk_id not in tok.encode("日本語 😀")


def test_save_and_load(small_tok, tmp_path):
    out = small_tok.save(tmp_path / "copy")
    again = Tokenizer.load(out)
    assert again.sha256 == small_tok.sha256
    assert again.encode(PROSE) == small_tok.encode(PROSE)
    assert Tokenizer.load(out / "tokenizer.model").vocab_size == 400


def test_load_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(OpenLLMError, match=r"no tokenizer at .*train-tokenizer"):
        Tokenizer.load(tmp_path / "nothing")


def test_vocab_too_large_suggests_a_size_that_works(tmp_path):
    (tmp_path / "a.txt").write_text(PROSE, encoding="utf-8")
    with pytest.raises(OpenLLMError, match=r"vocab size 5000 is too large .*try --vocab-size (\d+)") as info:
        train_tokenizer([tmp_path / "a.txt"], tmp_path / "tok", vocab_size=5000, progress=False)
    suggested = int(re.search(r"--vocab-size (\d+)", str(info.value)).group(1))
    assert not (tmp_path / "tok" / "tokenizer.model").exists()
    tok = train_tokenizer([tmp_path / "a.txt"], tmp_path / "tok", vocab_size=suggested, progress=False)
    assert tok.vocab_size == suggested


def test_vocab_too_small_and_bad_options(tmp_path):
    (tmp_path / "a.txt").write_text(PROSE, encoding="utf-8")
    with pytest.raises(OpenLLMError, match="vocab size 100 is too small.*take 260 ids"):
        train_tokenizer([tmp_path / "a.txt"], tmp_path / "t", vocab_size=100, progress=False)
    with pytest.raises(OpenLLMError, match="bpe or unigram"):
        train_tokenizer([tmp_path / "a.txt"], tmp_path / "t", vocab_size=400, model_type="wordpiece", progress=False)
    with pytest.raises(OpenLLMError, match="not found"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "t", vocab_size=400, progress=False)


def test_sentence_cap_samples_deterministically(tmp_path):
    lines = [f"line number {i} says {'word ' * (i % 7)}".strip() for i in range(3000)]
    (tmp_path / "a.txt").write_text("\n".join(lines), encoding="utf-8")
    a = train_tokenizer([tmp_path / "a.txt"], tmp_path / "a", vocab_size=300, max_sentences=500, progress=False)
    b = train_tokenizer([tmp_path / "a.txt"], tmp_path / "b", vocab_size=300, max_sentences=500, progress=False)
    info = json.loads((tmp_path / "a" / "openllm_tokenizer.json").read_text())
    assert info["training_lines"] == 500 and info["corpus_lines"] == 3000
    assert a.sha256 == b.sha256


def _parity_texts(shared_data):
    texts = [
        shared_data.joinpath("wikitext2_raw_test.txt").read_text(encoding="utf-8")[:100_000],
        shared_data.joinpath("tinyshakespeare.txt").read_text(encoding="utf-8")[-50_000:],
    ]
    with open(shared_data / "lambada_test.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for _, line in zip(range(200), f)]
    return texts + TRICKY


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_autotokenizer_gives_the_same_ids_on_real_text(shared_data, tmp_path, model_type):
    from transformers import AutoTokenizer

    tok = train_tokenizer(
        [shared_data / "tinyshakespeare.txt"],
        tmp_path / "tok",
        vocab_size=1000,
        model_type=model_type,
        user_tokens=["<|user|>"],
        max_sentences=8000,
        progress=False,
    )
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2, 3)
    assert len(hf) == tok.vocab_size
    texts = _parity_texts(shared_data)
    if model_type == "unigram":
        # SentencePiece sums unigram scores in float32: on a 100 kB string its Viterbi path can differ from the
        # exact (float64) one of `tokenizers`; documents of paragraph size agree
        texts = [t for t in texts if len(t) < 20_000]
    for text in texts:
        ids = tok.encode(text)
        assert hf(text)["input_ids"] == ids, text[:80]
        assert hf.decode(ids) == text == tok.decode(ids)


@pytest.mark.slow
def test_cli_train_tokenizer(tmp_path, shared_data):
    proc = run_cli(
        "train-tokenizer",
        "--data",
        str(shared_data / "tinyshakespeare.txt"),
        "--vocab-size",
        "512",
        "--out",
        str(tmp_path / "tok"),
        "--user-token",
        "<|end|>",
    )
    assert "vocab 512" in proc.stdout and "pad=0 unk=1 bos=2 eos=3" in proc.stdout
    assert Tokenizer.load(tmp_path / "tok").encode("<|end|>") == [4]
    bad = run_cli(
        "train-tokenizer",
        "--data",
        str(shared_data / "tinyshakespeare.txt"),
        "--vocab-size",
        "900000",
        "--out",
        str(tmp_path / "t2"),
        check=False,
    )
    assert bad.returncode == 2
    assert re.search(r"error: vocab size 900000 is too large .*try --vocab-size \d+", bad.stderr)
    assert "Traceback" not in bad.stderr


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "And the earth?"},
    ],
    [
        {"role": "system", "content": "  Speak\nplainly. "},
        {"role": "user", "content": "<|user|> day and night"},
        {"role": "assistant", "content": "And God said"},
        {"role": "user", "content": "café 日本語"},
        {"role": "assistant", "content": "Let there be light"},
    ],
]


def test_chat_template_renders_a_plain_transcript():
    from openllm.tokenizer import apply_chat_template

    text = apply_chat_template(CONVERSATIONS[1])
    assert text == "<s>System: You are terse.\nUser: Hello!\nAssistant: Hi.</s>\nUser: And the earth?\nAssistant:"
    assert apply_chat_template(CONVERSATIONS[0], add_generation_prompt=False) == "<s>User: Hello!\n"
    with pytest.raises(OpenLLMError, match="assistant and tool, not robot"):
        apply_chat_template([{"role": "robot", "content": "x"}])


# OpenAI's shapes: a function list, an assistant turn that calls (arguments as a JSON string, as OpenAI sends
# them, or as an object, as transformers' examples write them) and a tool's result
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_verse",
            "description": "The text of a verse, e.g. <John 3:16> & co.",
            "parameters": {
                "type": "object",
                "properties": {"book": {"type": "string"}, "verse": {"type": "integer"}},
                "required": ["book"],
            },
        },
    }
]
TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Quote John 3:16."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_verse", "arguments": '{"book": "John"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_verse", "arguments": {"verse": 16}}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "For God so loved the world."},
    {"role": "assistant", "content": "For God so loved the world."},
]


def test_chat_template_renders_tools_calls_and_results():
    from openllm.tokenizer import apply_chat_template

    function = (
        'Function: {"name": "get_verse", "description": "The text of a verse, e.g. <John 3:16> & co.", '
        '"parameters": {"type": "object", "properties": {"book": {"type": "string"}, "verse": {"type": "integer"}}, '
        '"required": ["book"]}}\n'
    )
    assert apply_chat_template(TOOL_CHAT, tools=TOOLS) == (
        "<s>System: Be brief.\n" + function + "User: Quote John 3:16.\n"
        'Assistant: <tool_call>{"name": "get_verse", "arguments": {"book": "John"}}</tool_call>\n'
        '<tool_call>{"name": "get_verse", "arguments": {"verse": 16}}</tool_call></s>\n'
        "Tool: For God so loved the world.\nAssistant: For God so loved the world.</s>\nAssistant:"
    )
    # no system message: the functions come first; without tools nothing about them is written
    assert apply_chat_template(TOOL_CHAT[1:2], tools=TOOLS) == "<s>" + function + "User: Quote John 3:16.\nAssistant:"
    assert apply_chat_template(TOOL_CHAT[1:2]) == "<s>User: Quote John 3:16.\nAssistant:"


def test_transformers_applies_the_same_chat_template(small_tok):
    from transformers import AutoTokenizer

    from openllm.tokenizer import apply_chat_template

    hf = AutoTokenizer.from_pretrained(str(small_tok.dir))
    for msgs in CONVERSATIONS:
        for gen in (True, False):
            text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert text == apply_chat_template(msgs, add_generation_prompt=gen)
            ids = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
            ids = ids["input_ids"] if not isinstance(ids, list) else ids
            assert list(ids) == small_tok.encode_chat(msgs, add_generation_prompt=gen)
    text = hf.apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text == apply_chat_template(TOOL_CHAT, tools=TOOLS)
    ids = hf.apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert list(ids) == small_tok.encode_chat(TOOL_CHAT, tools=TOOLS)
    assert small_tok.encode_chat(CONVERSATIONS[1])[0] == small_tok.bos_id
    assert small_tok.eos_id in small_tok.encode_chat(CONVERSATIONS[1])


def test_hf_tokenizer_config_behaves_alike_across_transformers_versions(small_tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(small_tok.dir))
    enc = hf(["And God said", "light"], padding=True)
    assert set(enc.keys()) == {"input_ids", "attention_mask"}
    assert hf.padding_side == "left" and enc["attention_mask"][1][0] == 0
