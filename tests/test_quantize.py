"""Dynamic int8 quantization: every Linear becomes int8, the fp32 model is untouched, logits stay close and
generation works; the onnxruntime route too."""

import numpy as np
import pytest
import torch

import openllm
from openllm.config import ModelConfig
from openllm.export.quantize import quantize_int8
from openllm.generate import SamplingParams, generate
from openllm.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256, max_seq_len=128)
    return Transformer(cfg).eval()


def test_linears_become_int8_and_the_original_is_untouched(model):
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    assert isinstance(q.lm_head, QLinear) and isinstance(q.layers[0].attn.wqkv, QLinear)
    assert isinstance(q.layers[1].mlp.w2, QLinear)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.tok_embeddings.weight
    # the embedding lookup stays exact fp32
    assert torch.equal(q.tok_embeddings.weight, model.tok_embeddings.weight)


def test_logits_stay_close(model):
    q = quantize_int8(model)
    ids = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids), q(ids)
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1)
    assert cos.min() > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
    loss_a = torch.nn.functional.cross_entropy(a.flatten(0, 1), ids.roll(-1, 1).flatten())
    loss_b = torch.nn.functional.cross_entropy(b.flatten(0, 1), ids.roll(-1, 1).flatten())
    assert abs(loss_a - loss_b) < 0.01


def test_generate_runs_on_the_int8_model(model):
    q = quantize_int8(model)
    out = generate(q, [[1, 2, 3], [9]], SamplingParams(max_new_tokens=12, temperature=0))
    assert [len(o) for o in out] == [12, 12]
    assert all(0 <= t < 512 for o in out for t in o)


@pytest.mark.slow
def test_onnxruntime_int8(tmp_path, export_run):
    from openllm.export import export
    from openllm.export.onnx import OnnxRunner, past_names
    from openllm.export.quantize import quantize_onnx_int8

    loaded = openllm.load(export_run)
    export(loaded, tmp_path / "onnx", "onnx", progress=False)
    q = quantize_onnx_int8(tmp_path / "onnx")
    assert q.name == "model.int8.onnx" and q.stat().st_size < (tmp_path / "onnx" / "model.onnx").stat().st_size
    import onnxruntime as ort

    c = loaded.config.model
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, c.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    feeds = {
        "input_ids": ids.numpy(),
        "attention_mask": np.ones((2, 16), np.int64),
        "position_ids": np.tile(np.arange(16), (2, 1)),
        **{n: np.zeros((2, c.n_kv_heads, 0, c.head_dim), np.float32) for n in past_names(c.n_layers)[0]},
    }
    got = sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        want = loaded.model(ids).numpy()
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.98
    assert OnnxRunner(tmp_path / "onnx").meta["n_layers"] == c.n_layers
