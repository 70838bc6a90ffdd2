"""The training form's fields: which settings the app's Train tab shows, in order, each described by the config
itself (:func:`openllm.config.setting`: label, help, type, choices). The form's widgets, its values, a preset's or
a saved config's values and the validation are all generated from :data:`TRAIN_FIELDS`, so adding a setting to
the form is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config, DataConfig, Setting, setting

__all__ = ["FormField", "TRAIN_FIELDS", "field_for_key", "form_values"]


@dataclass(frozen=True)
class FormField:
    """A setting as the form shows it: ``name`` is its key in the form's values (the names the app has always
    used), ``elem_id`` the page's element id, ``place`` where it sits (``basic`` or ``advanced``)."""

    setting: Setting
    name: str
    elem_id: str
    place: str
    help: str

    @property
    def label(self) -> str:
        return self.setting.label

    @property
    def key(self) -> str:
        return self.setting.key


def _field(
    key: str, name: str | None = None, elem_id: str | None = None, place: str = "advanced", help: str | None = None
) -> FormField:
    s = setting(key)
    name = name or key.partition(".")[2]
    return FormField(s, name, elem_id or name.replace("_", "-"), place, s.help if help is None else help)


TRAIN_FIELDS: tuple[FormField, ...] = (
    # the app always trains a tokenizer for the run, which takes the vocabulary Config.validate(new_tokenizer) allows
    _field("model.vocab_size", place="top", help=f"tokenizer pieces (at least {DataConfig().tokenizer_vocab_floor()})"),
    _field("train.recipe", place="basic"),
    _field("train.lr", place="basic", help="peak, after warmup; under Muon, AdamW's rate for embeddings, head, norms"),
    _field("train.micro_batch_size", "batch_size", place="basic"),
    _field("train.max_steps", elem_id="steps", place="basic"),
    _field("train.grad_accum_steps", "grad_accum"),
    _field("train.optimizer"),
    _field("train.muon_lr"),
    _field("train.schedule", elem_id="scheduler"),
    _field("train.weight_decay"),
    _field("train.grad_clip"),
    _field("train.warmup_steps", elem_id="warmup"),
    _field("train.min_lr"),
    _field("train.eval_every"),
    _field("train.save_every"),
)


def field_for_key(key: str | None) -> FormField | None:
    """The form's field for a setting (``train.lr``), or None when the form does not show it."""
    return next((f for f in TRAIN_FIELDS if f.key == key), None)


def form_values(cfg: Config) -> dict[str, Any]:
    """The form's values for a config, by field name."""
    return {f.name: f.setting.get(cfg) for f in TRAIN_FIELDS}
