"""Step-based version names: step 7000 -> ``7k``, 1500 -> ``1.5k``, below 1000 the step itself (``500``)."""

from __future__ import annotations

import re

__all__ = ["version_for_step", "step_of_version", "sort_versions"]

_VERSION = re.compile(r"^(\d+(?:\.\d+)?)(k?)$")


def version_for_step(step: int) -> str:
    """The default version name of a checkpoint at ``step``, in thousands of steps: 7000 -> 7k,
    1500 -> 1.5k, 500 -> 500."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < 1000:
        return str(step)
    whole, rest = divmod(step, 1000)
    return f"{whole}k" if rest == 0 else f"{whole}.{rest:03d}".rstrip("0") + "k"


def step_of_version(version: str) -> int | None:
    """Inverse of :func:`version_for_step` (``"7k"`` -> 7000); None for names that are not step-based."""
    m = _VERSION.match(version)
    if not m:
        return None
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    return int(round(value)) if abs(value - round(value)) < 1e-9 else None


def sort_versions(names: list[str], dates: dict[str, str] | None = None) -> list[str]:
    """Oldest first: by step when every name is step-based, else by creation date (then name)."""
    dates = dates or {}
    steps = {n: step_of_version(n) for n in names}
    if all(s is not None for s in steps.values()):
        return sorted(names, key=lambda n: (steps[n], n))
    return sorted(names, key=lambda n: (dates.get(n, ""), n))
