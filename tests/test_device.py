"""openllm.device.resolve_device: what ``--device`` names, checked before a model is built."""

import pytest
import torch

from openllm.device import resolve_device
from openllm.distributed import init_distributed
from openllm.errors import OpenLLMError


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_auto_prefers_cuda_then_mps_then_cpu():
    want = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    assert resolve_device("auto") == resolve_device(None) == resolve_device("") == resolve_device(" AUTO ") == want
    assert resolve_device("cpu") == resolve_device("CPU") == "cpu"


@pytest.mark.parametrize(
    "value, message",
    [
        ("gpu", "--device 'gpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", "--device 'cuda:x' is not a device"),
        ("cpu:1", "--device 'cpu:1': the CPU takes no index; use --device cpu"),
    ],
)
def test_unknown_device_is_a_user_error(value, message):
    with pytest.raises(OpenLLMError) as e:
        resolve_device(value)
    assert str(e.value).startswith(message)


def test_missing_accelerator_is_a_user_error():
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert resolve_device("cuda:0") == "cuda:0"
        with pytest.raises(OpenLLMError, match=f"this machine has {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")
    else:
        with pytest.raises(OpenLLMError, match="--device cuda: no CUDA GPU is visible to torch here"):
            resolve_device("cuda")
    if not _mps():
        with pytest.raises(OpenLLMError, match="--device mps: MPS is not available here"):
            resolve_device("mps")


def test_training_picks_its_device_through_resolve_device():
    # one process (no torchrun): a CUDA device gets the local rank's index, 0
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device(resolve_device("auto"))
    assert init_distributed("auto").device == init_distributed(None).device == want
    assert init_distributed("cpu").device == torch.device("cpu")
    with pytest.raises(OpenLLMError, match="not a device"):
        init_distributed("gpu")


def test_every_entry_point_defaults_to_auto():
    # one default: a fine-tune that trains on a GPU also loads, evaluates and serves there
    import inspect

    import openllm
    from openllm import loading
    from openllm.evaluate import evaluate
    from openllm.evaluate.chat import evaluate_chat
    from openllm.evaluate.harness import run_harness
    from openllm.serve.server import app_from_source

    for fn in (openllm.load, loading.load, evaluate, evaluate_chat, run_harness, app_from_source):
        assert inspect.signature(fn).parameters["device"].default == "auto", fn.__qualname__
