"""GGUF export: read back with gguf's own reader; every tensor, the metadata and the vocabulary checked;
the q/k permutation checked against llama.cpp's rope convention; llama.cpp itself when it is installed."""

import json

import numpy as np
import pytest
import torch

import openllm
from conftest import make_export_run
from openllm.export import export
from openllm.export.gguf import gguf_tensors

TYPES = ("f32", "f16", "q8_0")


@pytest.fixture(
    scope="module",
    params=[dict(tied=True), dict(default_recipe=True, n_kv_heads=1)],
    ids=["gqa-tied", "mqa-default-recipe-trained"],
)
def gguf_export(request, tmp_path_factory, export_tokenizer_dir, default_recipe_run):
    root = tmp_path_factory.mktemp("gguf")
    if request.param.get("default_recipe"):  # trained for real with the presets' default recipe
        run = default_recipe_run(request.param["n_kv_heads"])
    else:
        run = make_export_run(root / "run", export_tokenizer_dir, steps=(4,), **request.param)
    export(run, root / "gguf", "gguf", gguf_types=",".join(TYPES), progress=False, license=LICENSE, source_url=SOURCE)
    return openllm.load(run), root / "gguf"


LICENSE, SOURCE = "cc0-1.0", "https://huggingface.co/someone/export-test"


def _reader(folder, t):
    from gguf import GGUFReader

    return GGUFReader(str(folder / f"model-{t}.gguf"))


def _field(r, key):
    return r.fields[key].contents()


@pytest.mark.parametrize("t", TYPES)
def test_metadata(gguf_export, t):
    loaded, folder = gguf_export
    m = loaded.config.model
    r = _reader(folder, t)
    assert _field(r, "general.architecture") == "llama"
    expect = {
        "llama.context_length": m.max_seq_len,
        "llama.embedding_length": m.d_model,
        "llama.block_count": m.n_layers,
        "llama.feed_forward_length": m.d_ff,
        "llama.attention.head_count": m.n_heads,
        "llama.attention.head_count_kv": m.n_kv_heads,
        "llama.rope.dimension_count": m.head_dim,
        "llama.vocab_size": m.vocab_size,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 3,
        "tokenizer.ggml.unknown_token_id": 1,
        "tokenizer.ggml.padding_token_id": 0,
        "general.file_type": {"f32": 0, "f16": 1, "q8_0": 7}[t],
    }
    for k, v in expect.items():
        assert _field(r, k) == v, k
    assert _field(r, "llama.rope.freq_base") == pytest.approx(m.rope_theta)
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(m.norm_eps)
    assert _field(r, "tokenizer.ggml.add_space_prefix") is False


@pytest.mark.parametrize("t", TYPES)
def test_release_metadata_and_chat_template(gguf_export, t):
    from openllm.tokenizer import CHAT_TEMPLATE

    loaded, folder = gguf_export
    r = _reader(folder, t)
    assert _field(r, "general.name") == loaded.config.name == "export-test"
    assert _field(r, "general.license") == LICENSE
    assert _field(r, "general.source.url") == SOURCE
    assert _field(r, "llama.context_length") == loaded.config.model.max_seq_len
    assert _field(r, "tokenizer.chat_template") == CHAT_TEMPLATE


def test_license_defaults_to_other(tmp_path, export_run):
    from gguf import GGUFReader

    export(export_run, tmp_path / "g", "gguf", gguf_types="f32", progress=False)
    r = GGUFReader(str(tmp_path / "g" / "model-f32.gguf"))
    assert _field(r, "general.license") == "other" and "general.source.url" not in r.fields


@pytest.mark.parametrize("t", TYPES)
def test_every_tensor(gguf_export, t):
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    loaded, folder = gguf_export
    want = gguf_tensors(loaded.model)
    r = _reader(folder, t)
    got = {x.name: x for x in r.tensors}
    assert set(got) == set(want)
    assert ("output.weight" in got) == (not loaded.config.model.tie_embeddings)
    for name, w in want.items():
        x = got[name]
        assert list(x.shape) == list(reversed(w.shape)), name  # GGUF lists dimensions innermost first
        if w.ndim == 1 or t == "f32":
            assert x.tensor_type == Q.F32 and np.array_equal(np.asarray(x.data).reshape(w.shape), w), name
        elif t == "f16":
            assert x.tensor_type == Q.F16
            assert np.array_equal(np.asarray(x.data).reshape(w.shape), w.astype(np.float16)), name
        else:
            assert x.tensor_type == Q.Q8_0, name
            raw = np.asarray(x.data)
            assert np.array_equal(raw.reshape(-1), quantize(w, Q.Q8_0).reshape(-1)), name
            back = dequantize(raw, Q.Q8_0).reshape(w.shape)
            # q8_0: 32 values share a scale d = max|x|/127 (stored as f16, relative error <= 2^-11), so each
            # value is within d/2 + 127 * d * 2^-11; a scale below f16's smallest normal (6.1e-5: small weights,
            # e.g. projections that started at zero) is subnormal, stored to within 2^-25 absolute instead
            step = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            bound = step * (0.5 + 127 / 2048) + 127 * 2.0**-25 + 1e-7
            assert (np.abs(back - w).reshape(-1, 32) <= bound).all(), name


def test_vocabulary(gguf_export):
    import sentencepiece as spm

    loaded, folder = gguf_export
    sp = spm.SentencePieceProcessor(model_file=str(loaded.tokenizer.model_path))
    r = _reader(folder, "f16")
    tokens = _field(r, "tokenizer.ggml.tokens")
    scores = _field(r, "tokenizer.ggml.scores")
    types = _field(r, "tokenizer.ggml.token_type")
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert len(tokens) == loaded.config.model.vocab_size == sp.get_piece_size()
    for i in range(sp.get_piece_size()):
        assert tokens[i] == sp.id_to_piece(i)
        assert scores[i] == pytest.approx(sp.get_score(i))
        kind = (
            2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else None
        )
        assert kind is None and types[i] in (1, 4) or types[i] == kind, (i, tokens[i], types[i])
    assert types[:4] == [3, 2, 3, 3]  # <pad> control, <unk> unknown, <s>, </s> control


def _rope_interleaved(x, pos, theta):
    """llama.cpp's LLAMA rope (``rope_type`` normal): rotate adjacent pairs (2i, 2i+1)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def test_qk_permutation_gives_our_attention_scores(gguf_export):
    """The permuted q/k, rotated the way llama.cpp rotates, give the same attention scores as our model:
    the permutation is what makes the two rope conventions agree."""
    from openllm.model import apply_rope

    loaded, folder = gguf_export
    model, m = loaded.model, loaded.config.model
    want = gguf_tensors(model)
    T, D = 9, m.head_dim
    x = np.random.default_rng(0).standard_normal((T, m.d_model))
    pos = np.arange(T, dtype=np.float64)
    rep = m.n_heads // m.n_kv_heads
    wqkv = model.layers[1].attn.wqkv.weight.detach().double()
    q_ours, k_ours, _ = (torch.from_numpy(x) @ wqkv.T).split(
        [m.n_heads * D, m.n_kv_heads * D, m.n_kv_heads * D], dim=-1
    )
    cos, sin = model.rope_cos[:T].double()[None], model.rope_sin[:T].double()[None]
    q_ours = apply_rope(q_ours.view(T, m.n_heads, D).transpose(0, 1), cos, sin).numpy()
    k_ours = apply_rope(k_ours.view(T, m.n_kv_heads, D).transpose(0, 1), cos, sin).numpy()
    q_g = (x @ want["blk.1.attn_q.weight"].astype(np.float64).T).reshape(T, m.n_heads, D).transpose(1, 0, 2)
    k_g = (x @ want["blk.1.attn_k.weight"].astype(np.float64).T).reshape(T, m.n_kv_heads, D).transpose(1, 0, 2)
    q_g, k_g = _rope_interleaved(q_g, pos, m.rope_theta), _rope_interleaved(k_g, pos, m.rope_theta)
    for h in range(m.n_heads):
        ours = q_ours[h] @ k_ours[h // rep].T
        theirs = q_g[h] @ k_g[h // rep].T
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-4)
    # without the permutation the scores differ: the test can fail
    q_raw = (x @ wqkv[: m.n_heads * D].numpy().T).reshape(T, m.n_heads, D).transpose(1, 0, 2)
    assert not np.allclose(
        _rope_interleaved(q_raw, pos, m.rope_theta)[0] @ k_g[0].T, q_ours[0] @ k_ours[0].T, atol=1e-3
    )


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source)")


# llama-cpp-python 0.3.36 (built here 2026-12-03) dies with SIGSEGV evaluating any q8_0 file of this width, the
# export from before this session's changes included: not run, so it cannot take the test process down with it
LLAMA_TYPES = [
    pytest.param(t, marks=pytest.mark.xfail(run=False, reason="llama.cpp 0.3.36 segfaults on q8_0 at width 64"))
    if t == "q8_0"
    else t
    for t in TYPES
]


@pytest.mark.slow
def test_llama_cpp_applies_our_chat_template(gguf_export, llama_cpp):
    """llama-cpp-python reads tokenizer.chat_template from the file and renders a conversation as we do."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from openllm.tokenizer import CHAT_TEMPLATE, apply_chat_template

    loaded, folder = gguf_export
    llm = llama_cpp.Llama(model_path=str(folder / "model-f32.gguf"), n_ctx=128, n_threads=1, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who made light?"},
        {"role": "assistant", "content": "God."},
        {"role": "user", "content": "When?"},
    ]
    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    assert fmt(messages=messages).prompt == apply_chat_template(messages)
    # tools, an assistant's calls and a tool's result, as llama-cpp-python's server renders a request's tools
    from test_tokenizer import TOOL_CHAT, TOOLS

    assert fmt(messages=TOOL_CHAT, tools=TOOLS).prompt == apply_chat_template(TOOL_CHAT, tools=TOOLS)


@pytest.mark.slow
@pytest.mark.parametrize("t", LLAMA_TYPES)
def test_llama_cpp_logits_and_greedy_tokens(gguf_export, llama_cpp, t):
    """llama.cpp itself loads the file: same token ids as our tokenizer, logits like ours (exact up to float
    rounding for f32, close for f16 and q8_0), and for f32 the same greedy tokens."""
    from openllm.generate import SamplingParams, generate

    loaded, folder = gguf_export
    # type_k/type_v 0 = GGML_TYPE_F32: llama.cpp keeps its KV cache in f16 by default, which alone moves logits
    # by ~1e-2
    llm = llama_cpp.Llama(
        model_path=str(folder / f"model-{t}.gguf"),
        n_ctx=128,
        n_threads=1,
        n_batch=128,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
    )
    text = "def export(source):\n    return"
    ids = loaded.tokenizer.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids]))[0].numpy()
    if t == "f32":
        np.testing.assert_allclose(theirs, ours, atol=2e-3, rtol=1e-3)
    else:
        cos = (theirs * ours).sum(-1) / np.linalg.norm(theirs, axis=-1) / np.linalg.norm(ours, axis=-1)
        assert cos.min() > (0.999 if t == "f16" else 0.99), cos
    if t == "f32":
        llm.reset()
        want = generate(loaded.model, [ids], SamplingParams(max_new_tokens=16, temperature=0))[0]
        got = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            got.append(tok)
            if len(got) == 16:
                break
        assert got == want


# --- a fine-tune, a hub reference, the default license (issue 24) -----------------------------------------


def _mark_finetuned(run, base_ref="me/tiny@300"):
    """What openllm finetune records in each checkpoint's state.json (only the fields the export reads)."""
    import json

    for state_file in (run / "checkpoints").glob("step_*/state.json"):
        state = json.loads(state_file.read_text())
        state["finetune"] = {
            "base": {
                "source": base_ref,
                "path": "/home/someone/private/base",
                "kind": "hf",
                "step": 300,
                "hub_ref": base_ref,
                "name": "export-test",
                "weights_sha256": "ab" * 32,
            },
            "data": {"path": "/home/someone/private/chats.jsonl", "sha256": "cd" * 32, "kept": 18},
            "lora": None,
        }
        state_file.write_text(json.dumps(state))


def test_a_fine_tune_is_named_and_marked_as_one(tmp_path, export_run):
    """general.name is not the base's, general.finetune/basename and general.base_model.* say what it was
    tuned from, also after a trip through the Hugging Face export; no private path gets into the file."""
    from gguf import GGUFReader

    _mark_finetuned(export_run)
    export(export_run, tmp_path / "g", "gguf,hf", gguf_types="f32", progress=False)
    export(tmp_path / "g" / "hf", tmp_path / "again", "gguf", gguf_types="f32", progress=False)
    for path in (tmp_path / "g" / "gguf" / "model-f32.gguf", tmp_path / "again" / "model-f32.gguf"):
        r = GGUFReader(str(path))
        assert _field(r, "general.name") != "export-test", path
        assert _field(r, "general.finetune") == "chat" and _field(r, "general.basename") == "export-test"
        assert _field(r, "general.base_model.count") == 1
        assert _field(r, "general.base_model.0.name") == "export-test"
        assert _field(r, "general.base_model.0.version") == "300"
        # me/tiny@300 is a reference of some hub, not a URL
        assert not [k for k in r.fields if k.endswith("url")], path
        assert b"/home/someone" not in path.read_bytes()[:1_000_000]


def test_a_hub_reference_is_not_written_as_a_url(tmp_path, export_run):
    from gguf import GGUFReader

    loaded = openllm.load(export_run, device="cpu")
    loaded.hub_ref = "me/tiny@300"  # as load("me/tiny@300") sets it
    export(loaded, tmp_path / "g", "gguf", gguf_types="f32", progress=False)
    r = GGUFReader(str(tmp_path / "g" / "model-f32.gguf"))
    assert "general.source.url" not in r.fields
    from openllm.errors import OpenLLMError

    with pytest.raises(OpenLLMError, match="URL"):
        export(loaded, tmp_path / "h", "gguf", gguf_types="f32", progress=False, source_url="me/tiny@300")


def test_the_default_license_other_has_a_name(tmp_path, export_run):
    """GGUF's convention (convert_hf_to_gguf): ``other`` comes with ``general.license.name``."""
    from gguf import GGUFReader

    export(export_run, tmp_path / "g", "gguf", gguf_types="f32", progress=False)
    r = GGUFReader(str(tmp_path / "g" / "model-f32.gguf"))
    assert _field(r, "general.license") == "other" and _field(r, "general.license.name") == "unknown"


def test_the_chat_stop_is_in_the_file_with_one_owner(gguf_export):
    """The stop at a new turn (tokenizer.CHAT_STOPS, the chat template's owner; the server uses the same
    tuple) is written where a GGUF reader finds it; the end of an assistant turn, EOS in the template, is
    also llama.cpp's end-of-turn token."""
    from openllm.serve import chat
    from openllm.tokenizer import CHAT_STOPS

    assert chat.CHAT_STOPS is CHAT_STOPS
    loaded, folder = gguf_export
    r = _reader(folder, "f32")
    # a JSON string: llama.cpp's metadata API (llama_model_meta_val_str, llama-cpp-python's Llama.metadata)
    # leaves array values out
    assert json.loads(_field(r, "openllm.chat.stop_strings")) == list(CHAT_STOPS)
    assert _field(r, "tokenizer.ggml.eot_token_id") == loaded.tokenizer.eos_id


@pytest.mark.slow
def test_llama_cpp_reads_the_chat_stops(gguf_export, llama_cpp):
    """What llama.cpp's own API hands a program: the stops, ready for a request's ``stop``."""
    from openllm.tokenizer import CHAT_STOPS

    _, folder = gguf_export
    llm = llama_cpp.Llama(str(folder / "model-f32.gguf"), n_ctx=128, verbose=False)
    assert json.loads(llm.metadata["openllm.chat.stop_strings"]) == list(CHAT_STOPS)
    assert llm.metadata["tokenizer.ggml.eot_token_id"] == "3"
