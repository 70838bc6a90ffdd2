import pytest
import torch

from openllm.config import ModelConfig
from openllm.generate import SamplingParams, generate, stream
from openllm.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # a larger init makes logits peaked, so greedy choices are not near-ties
    cfg = ModelConfig(
        vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128, init_std=0.2
    )
    return Transformer(cfg).eval()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [1, 2, 3]]


def test_greedy_with_cache_equals_without(model):
    p = SamplingParams(max_new_tokens=40, temperature=0)
    assert generate(model, PROMPTS, p, use_cache=True) == generate(model, PROMPTS, p, use_cache=False)


def test_batch_equals_one_at_a_time(model):
    p = SamplingParams(max_new_tokens=20, temperature=0)
    batched = generate(model, PROMPTS, p)
    single = [generate(model, [pr], p)[0] for pr in PROMPTS]
    assert batched == single


def test_greedy_matches_transformers_generate(model):
    from transformers import LlamaConfig, LlamaForCausalLM

    from openllm.hf_compat import llama_config_dict, to_hf_state_dict

    kw = llama_config_dict(model.cfg)
    for k in ("architectures", "model_type", "torch_dtype"):
        kw.pop(k)
    hf = LlamaForCausalLM(LlamaConfig(**kw)).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg), strict=False)
    prompt = PROMPTS[0]
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=25, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out[0, len(prompt) :].tolist() == generate(model, [prompt], SamplingParams(25, temperature=0))[0]


def test_seeded_sampling_is_reproducible(model):
    p = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.9, seed=123)
    a = generate(model, PROMPTS, p)
    b = generate(model, PROMPTS, p)
    assert a == b
    c = generate(model, PROMPTS, SamplingParams(30, temperature=1.0, top_k=50, top_p=0.9, seed=124))
    assert a != c


def test_top_k_one_is_greedy(model):
    greedy = generate(model, PROMPTS, SamplingParams(15, temperature=0))
    assert generate(model, PROMPTS, SamplingParams(15, temperature=0.7, top_k=1, seed=1)) == greedy


def test_stop_tokens_end_a_sequence(model):
    free = generate(model, [PROMPTS[0]], SamplingParams(30, temperature=0))[0]
    stop = free[5]
    out = generate(model, [PROMPTS[0]], SamplingParams(30, temperature=0, stop_tokens=[stop]))[0]
    assert out == free[: free.index(stop) + 1]


def test_repetition_penalty_reduces_repeats(model):
    plain = generate(model, [[7]], SamplingParams(60, temperature=0))[0]
    penal = generate(model, [[7]], SamplingParams(60, temperature=0, repetition_penalty=5.0))[0]
    assert len(set(penal)) > len(set(plain))


def test_stream_yields_the_same_tokens(model):
    p = SamplingParams(max_new_tokens=20, temperature=0)
    assert list(stream(model, PROMPTS[0], p)) == generate(model, [PROMPTS[0]], p)[0]


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(temperature=-1), "temperature must be >= 0"),
        (dict(top_p=0), "top_p must be in"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(max_new_tokens=1000), "exceeds the model's context of 128"),
    ],
)
def test_bad_params(model, kw, msg):
    with pytest.raises(ValueError, match=msg):
        generate(model, PROMPTS, SamplingParams(**{"max_new_tokens": 5, **kw}))


def test_cpu_decode_fast_path_follows_weight_updates_and_leaves_the_model_plain():
    """Generation on a CPU runs a twin of the model that multiplies by (in, out) weight copies taken when it
    starts: an in-place weight update (an optimizer step) between two generations is seen by the next one, the
    twin gives the model's logits, and the model itself stays plain ``nn.Linear``/``RMSNorm`` modules."""
    from openllm.generate import fast_decode
    from openllm.model import RMSNorm

    torch.manual_seed(1)
    cfg = ModelConfig(
        vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128, init_std=0.2
    )
    m = Transformer(cfg).eval()
    p = SamplingParams(max_new_tokens=20, temperature=0)
    first = generate(m, PROMPTS, p)
    with torch.no_grad():
        for w in m.parameters():
            w.add_(torch.randn_like(w) * 0.2)
    second = generate(m, PROMPTS, p)
    assert second != first
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad(), fast_decode(m) as fast:
        assert type(fast.lm_head) is not torch.nn.Linear and fast.lm_head.weight is m.lm_head.weight
        torch.testing.assert_close(fast(ids[:, :1])[:, -1], m(ids[:, :1])[:, -1])
    plain = {torch.nn.Linear, RMSNorm}
    assert {type(x) for x in m.modules() if isinstance(x, (torch.nn.Linear, RMSNorm))} == plain


def test_a_tiny_top_p_keeps_the_best_token_instead_of_failing(model):
    """top_p of 1e-300 is 0 in float32: every token but the best is dropped, never all of them."""
    greedy = generate(model, PROMPTS, SamplingParams(10, temperature=0))
    assert generate(model, PROMPTS, SamplingParams(10, temperature=0.8, top_p=1e-300, seed=3)) == greedy
