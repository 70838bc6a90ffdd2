"""ONNX export: onnxruntime logits equal ours (dynamic batch and sequence), the past-key-values graph gives
the same logits step by step, and a greedy loop over onnxruntime gives our tokens."""

import json

import numpy as np
import pytest
import torch

import openllm
from conftest import make_export_run
from openllm.export import export
from openllm.generate import SamplingParams, generate

pytestmark = pytest.mark.slow


@pytest.fixture(
    scope="module",
    params=[dict(tied=True), dict(default_recipe=True, n_kv_heads=4)],
    ids=["gqa-tied", "mha-default-recipe-trained"],
)
def onnx_export(request, tmp_path_factory, export_tokenizer_dir, default_recipe_run):
    root = tmp_path_factory.mktemp("onnx")
    if request.param.get("default_recipe"):  # trained for real with the presets' default recipe
        run = default_recipe_run(request.param["n_kv_heads"])
    else:
        run = make_export_run(root / "run", export_tokenizer_dir, steps=(6,), **request.param)
    export(run, root / "onnx", "onnx", progress=False)
    return openllm.load(run), root / "onnx"


def test_files_in_optimums_layout_with_the_weights_stored_once(onnx_export):
    import onnx

    loaded, folder = onnx_export
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.onnx",
        "config.json",
        "generation_config.json",
        "onnx_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
    } <= names
    assert not [n for n in names if n.endswith(".onnx") and n != "model.onnx"]  # one graph
    meta = json.loads((folder / "onnx_config.json").read_text())
    assert meta["files"] == {"model": "model.onnx"}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["use_cache"] is True
    assert (
        json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == cfg["max_position_embeddings"]
    )
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    # every parameter is in the file once: its size is about the parameters' float32 bytes, not twice that
    n_params = sum(p.numel() for p in loaded.model.parameters())  # a tied head is the embedding: counted once
    size = (folder / "model.onnx").stat().st_size
    assert 4 * n_params <= size < 1.5 * 4 * n_params, (size, n_params)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (3, 8), (5, 64)])
def test_logits_match_with_dynamic_batch_and_sequence(onnx_export, shape):
    from openllm.export.onnx import OnnxRunner

    loaded, folder = onnx_export
    ids = torch.randint(0, loaded.config.model.vocab_size, shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded.model(ids).numpy()
    theirs = OnnxRunner(folder).logits(ids.numpy())
    np.testing.assert_allclose(theirs, ours, atol=1e-3, rtol=0)


def test_past_graph_matches_step_by_step(onnx_export):
    """Prompt pass with an empty past, then one token at a time: every step's logits equal the full forward."""
    from openllm.export.onnx import OnnxRunner, past_names

    loaded, folder = onnx_export
    c = loaded.config.model
    sess = OnnxRunner(folder).past
    ids = torch.randint(0, c.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = loaded.model(ids).numpy()
    names = past_names(c.n_layers)[0]
    past = {n: np.zeros((2, c.n_kv_heads, 0, c.head_dim), np.float32) for n in names}
    split = 7
    out = sess.run(
        None,
        {
            "input_ids": ids[:, :split].numpy(),
            "attention_mask": np.ones((2, split), np.int64),
            "position_ids": np.tile(np.arange(split), (2, 1)),
            **past,
        },
    )
    np.testing.assert_allclose(out[0], full[:, :split], atol=1e-3, rtol=0)
    for t in range(split, 12):
        past = dict(zip(names, out[1:]))
        assert past[names[0]].shape[2] == t
        out = sess.run(
            None,
            {
                "input_ids": ids[:, t : t + 1].numpy(),
                "attention_mask": np.ones((2, t + 1), np.int64),
                "position_ids": np.full((2, 1), t),
                **past,
            },
        )
        np.testing.assert_allclose(out[0][:, 0], full[:, t], atol=1e-3, rtol=0)


def test_greedy_loop_over_onnxruntime_gives_our_tokens(onnx_export):
    from openllm.export.onnx import OnnxRunner

    loaded, folder = onnx_export
    tok = loaded.tokenizer
    prompts = [tok.encode(t) for t in ("def export(", "x", "class OnnxRunner:\n    def")]
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_tokens=(tok.eos_id,))
    ours = generate(loaded.model, prompts, params)
    runner = OnnxRunner(folder)
    assert runner.generate(prompts, 30, stop_tokens=(tok.eos_id,)) == ours  # a left-padded batch
    assert [runner.generate([p], 30, stop_tokens=(tok.eos_id,))[0] for p in prompts] == ours


OPTIMUM_SNIPPET = """
import json, sys
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

folder, prompts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = ORTModelForCausalLM.from_pretrained(folder)
greedy = []
for p in prompts:
    inputs = tok(p, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=16)
    greedy.append(out[0, inputs["input_ids"].shape[1]:].tolist())
print(json.dumps({"greedy": greedy, "use_cache": model.can_use_cache, "merged": model.is_merged}))
"""


@pytest.fixture(scope="module")
def optimum_python(tmp_path_factory):
    """optimum-onnx pins transformers<4.58, so it gets its own venv (transformers at pyproject's floor),
    seeing torch and onnxruntime from this project's environment."""
    from test_packaging import fresh_venv

    return fresh_venv(
        tmp_path_factory.mktemp("optimum"),
        [
            "optimum-onnx==0.1.0",
            "optimum==2.1.*",
            "transformers==4.45.*",
            "tokenizers>=0.20,<0.21",
            "huggingface_hub>=0.23.2,<1.0",
        ],
    )


def test_optimum_loads_the_export_with_its_defaults_and_gives_our_greedy_tokens(onnx_export, optimum_python):
    import os
    import subprocess

    loaded, folder = onnx_export
    prompts = ["def export(", "class OnnxRunner:\n    def"]
    ours = generate(
        loaded.model,
        [loaded.tokenizer.encode(p) for p in prompts],
        SamplingParams(max_new_tokens=16, temperature=0, stop_tokens=(loaded.tokenizer.eos_id,)),
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(optimum_python), "-c", OPTIMUM_SNIPPET, str(folder), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["use_cache"] is True and got["merged"] is False
    assert got["greedy"] == ours


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0), dict(temperature=0.9, top_k=40, top_p=0.9, seed=7)],
    ids=["greedy", "seeded"],
)
def test_generate_the_servers_engine_and_onnxruntime_give_the_same_tokens(onnx_export, sampling):
    """One forward and one sampler serve every path: `openllm generate`, the server's batched engine (all
    prompts at once, each its own request) and the ONNX runner pick the same tokens, greedy and seeded."""
    import queue

    from openllm.export.onnx import OnnxRunner
    from openllm.serve import Engine, Job, Seq

    loaded, folder = onnx_export
    tok = loaded.tokenizer
    prompts = [tok.encode(t) for t in ("def export(", "x", "class OnnxRunner:\n    def")]
    params = SamplingParams(max_new_tokens=24, stop_tokens=(tok.eos_id,), **sampling)

    def strip(ids):
        return ids[:-1] if ids and ids[-1] == tok.eos_id else ids

    ours = [strip(generate(loaded.model, [p], params)[0]) for p in prompts]
    runner = OnnxRunner(folder)
    onnx = [strip(runner.generate([p], 24, stop_tokens=(tok.eos_id,), **sampling)[0]) for p in prompts]
    engine = Engine(loaded.model, tok, max_batch=4).start()
    events: queue.Queue = queue.Queue()
    try:
        for i, p in enumerate(prompts):
            seq = Seq(prompt=p, max_new=24, logprobs=0)
            engine.submit(Job(seqs=[seq], sampling=SamplingParams(**sampling), emit=lambda e, i=i: events.put((i, e))))
        served: dict[int, list[int]] = {}
        while len(served) < len(prompts):
            i, e = events.get(timeout=60)
            assert e[0] != "error", e
            if e[0] == "finish":
                served[i] = strip([t for t, _, _ in e[5]["tokens"]])  # the engine reports the EOS it stopped on
    finally:
        engine.stop()
    assert [served[i] for i in range(len(prompts))] == ours == onnx
    assert any(len(x) > 5 for x in ours)
