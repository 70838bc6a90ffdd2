"""The model: shapes, parameter counts, and logits parity with transformers' LlamaForCausalLM."""

import pytest
import torch

from openllm.config import ModelConfig, load_config
from openllm.hf_compat import from_hf_state_dict, llama_config_dict, to_hf_state_dict
from openllm.model import Transformer

TINY = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=160, max_seq_len=64)


def hf_twin(model: Transformer):
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = llama_config_dict(model.cfg)
    kwargs.pop("architectures"), kwargs.pop("model_type"), kwargs.pop("torch_dtype")
    hf = LlamaForCausalLM(LlamaConfig(**kwargs, attn_implementation="eager")).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg), strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"} and (model.cfg.tie_embeddings or not missing)
    return hf


def small_shape(**kw):
    cfg = load_config("small").model
    # the preset's block (width, heads, d_ff, rope): 2 of its 6 layers, and a 4096-token vocabulary instead of
    # 32000 (embedding rows map one to one whatever their number; the full-size tables cost 1.5 s a case)
    return ModelConfig(**{**cfg.__dict__, "n_layers": 2, "vocab_size": 4096, **kw})


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(dict(TINY), id="tiny-mha-tied"),
        pytest.param(dict(TINY, n_kv_heads=2), id="tiny-gqa-tied"),
        pytest.param(dict(TINY, n_kv_heads=1, tie_embeddings=False), id="tiny-mqa-untied"),
        pytest.param(dict(TINY, n_kv_heads=2, tie_embeddings=False), id="tiny-gqa-untied"),
        pytest.param("small", id="small-mha-tied"),
        pytest.param("small-gqa-untied", id="small-gqa-untied"),
    ],
)
def test_logits_match_transformers_llama(shape):
    torch.manual_seed(0)
    if shape == "small":
        cfg = small_shape()
    elif shape == "small-gqa-untied":
        cfg = small_shape(n_kv_heads=2, tie_embeddings=False)
    else:
        cfg = ModelConfig(**shape)
    model = Transformer(cfg).eval()
    # perturb the norms so that a mix-up of the two norms of a block would show
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    hf = hf_twin(model)
    idx = torch.randint(0, cfg.vocab_size, (2, min(cfg.max_seq_len, 96)))
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_hf_round_trip_is_exact():
    cfg = ModelConfig(**TINY, n_kv_heads=2, tie_embeddings=False)
    model = Transformer(cfg)
    back = from_hf_state_dict(to_hf_state_dict(model.state_dict(), cfg), cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k


def test_small_preset_is_about_36m_params_tied_and_52m_with_the_default_untied_head():
    from openllm.config import apply_overrides

    with torch.device("meta"):
        model = Transformer(load_config("small").model)  # the default recipe's untied head: a second 32000 x 512
        tied = Transformer(apply_overrides(load_config("small"), ["train.recipe=classic"]).model)
    assert 35e6 < tied.num_params() < 37e6 and model.num_params() == tied.num_params() + 32000 * 512
    assert (
        model.num_params(non_embedding=True) == tied.num_params(non_embedding=True) == tied.num_params() - 32000 * 512
    )


@pytest.mark.parametrize("name, low, high", [("medium", 140e6, 155e6), ("large", 370e6, 395e6)])
def test_larger_presets_sizes(name, low, high):
    with torch.device("meta"):
        model = Transformer(load_config(name).model)
    assert low < model.num_params() < high


def test_flops_per_token_counts_matmuls_and_attention():
    cfg = ModelConfig(**TINY)
    model = Transformer(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.flops_per_token(32) == 6 * linear + 12 * 2 * 64 * 32


def test_loss_and_backward():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY))
    idx = torch.randint(0, 512, (2, 16))
    logits, loss = model(idx, torch.randint(0, 512, (2, 16)))
    assert logits.shape == (2, 16, 512)
    # a random init predicts about uniformly: loss near ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(512.0)).item()) < 0.3
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_residual_projections_have_scaled_init():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=256, n_layers=8, n_heads=4, max_seq_len=32)
    model = Transformer(cfg)
    std_wo = model.layers[0].attn.wo.weight.std().item()
    std_wq = model.layers[0].attn.wqkv.weight.std().item()
    assert abs(std_wq - 0.02) < 0.002
    assert abs(std_wo - 0.02 / 4) < 0.001


def test_too_long_sequence_is_refused():
    model = Transformer(ModelConfig(**TINY))
    with pytest.raises(ValueError, match="exceeds max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_param_report_matches_the_model():
    cfg = ModelConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, tie_embeddings=False
    )
    from openllm.model import param_report

    report = param_report(cfg, seq_len=16)
    model = Transformer(cfg)
    assert report == {
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(16),
        "seq_len": 16,
    }
    assert param_report(cfg)["seq_len"] == 32  # the context length by default


def test_train_memory_estimate_grows_with_the_batch_and_the_model():
    from openllm.config import load_config
    from openllm.model import param_report, train_memory_bytes

    cfg = load_config("tiny").model
    one = train_memory_bytes(cfg, micro_batch=1, seq_len=64)
    assert one["states"] == 16 * param_report(cfg)["params"]  # fp32 weights, grads, two AdamW moments
    eight = train_memory_bytes(cfg, micro_batch=8, seq_len=64)
    assert eight["activations"] == 8 * one["activations"] and eight["states"] == one["states"]
    flash = train_memory_bytes(cfg, micro_batch=8, seq_len=64, attention_scores=False)
    assert flash["activations"] < eight["activations"]
    assert train_memory_bytes(load_config("large").model, micro_batch=1, seq_len=64)["states"] > 100 * one["states"]
