"""Publishing to a hub: a run, a checkpoint or an export becomes one model version (the Hugging Face export,
``openllm.json``, a model card, ``loss.png``, ``evaluation.json``), and a data file or folder becomes one
dataset commit (a dataset card and ``SHA256SUMS``). What the model card states comes from
:func:`collect_facts`, the one summary of what a run measured.

Built on :mod:`openllm.hub` (transport), :mod:`openllm.export` and :mod:`openllm.loading`. See docs/hub.md.
"""

from __future__ import annotations

from .cards import dataset_card, model_card
from .datasets import DatasetUpload, upload_dataset
from .facts import RunFacts, collect_facts
from .models import PushResult, push_model

__all__ = [
    "push_model",
    "PushResult",
    "upload_dataset",
    "DatasetUpload",
    "collect_facts",
    "RunFacts",
    "model_card",
    "dataset_card",
]
