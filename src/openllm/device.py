"""Which torch device a ``--device`` value names: ``auto`` (the default everywhere) picks CUDA when a GPU is
visible, else Apple's MPS when present, else the CPU; any other value is checked before a model is built, so a
typo or a missing GPU fails in one line instead of deep inside torch."""

from __future__ import annotations

from .errors import OpenLLMError

__all__ = ["AUTO", "DEVICE_HELP", "resolve_device"]

AUTO = "auto"
DEVICE_HELP = "auto (default: cuda when a GPU is visible, else mps when present, else cpu), cpu, cuda, cuda:N or mps"

_TYPES = ("cpu", "cuda", "mps")


def resolve_device(requested: str | None = AUTO) -> str:
    """The device ``requested`` names, as a string torch accepts: ``"cuda"``, ``"mps"`` or ``"cpu"`` for
    ``auto``/``None``; ``"cuda"`` stays without an index (under torchrun the process's local rank picks the
    GPU). Raises :class:`OpenLLMError` for an unknown device or one this machine does not have."""
    import torch

    text = AUTO if requested is None else str(requested).strip().lower()
    if text in ("", AUTO):
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    kind, colon, index = text.partition(":")
    if kind not in _TYPES or (colon and not index.isdigit()):
        raise OpenLLMError(f"--device {requested!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise OpenLLMError(f"--device {requested}: no CUDA GPU is visible to torch here; use --device auto or cpu")
        if colon and int(index) >= torch.cuda.device_count():
            raise OpenLLMError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
            )
    if kind == "mps" and not _mps_available(torch):
        raise OpenLLMError(f"--device {requested}: MPS is not available here; use --device auto or cpu")
    if kind == "cpu" and colon:
        raise OpenLLMError(f"--device {requested!r}: the CPU takes no index; use --device cpu")
    return text


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
