"""Configuration: dataclasses for the model, training and data settings, JSON presets, validation.

One config object flows from a JSON preset through training into the checkpoint, the export and the model
card. A preset file holds three sections::

    {"model": {...}, "train": {...}, "data": {...}}

Loading validates every field and fails with :class:`ConfigError`, a one-line message naming the field.
Overrides (``--set train.lr=3e-4``) are parsed here too: :func:`parse_overrides`, :func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "DataConfig",
    "Config",
    "load_config",
    "preset_names",
    "find_preset",
    "PRESETS_DIR",
    "parse_overrides",
    "apply_overrides",
    "override_keys",
]


@dataclass
class ModelConfig:
    """Shape of the Llama-shaped decoder (RMSNorm, RoPE, SwiGLU, optional GQA)."""

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: same as n_heads (plain multi-head attention)
    d_ff: int | None = None  # SwiGLU hidden width; None: 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    zero_init_proj: bool = False  # attention and MLP output projections (wo, w2) start at zero

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None and isinstance(self.d_model, int) and self.d_model > 0:
            self.d_ff = 64 * math.ceil(8 * self.d_model / 3 / 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> ModelConfig:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            _positive_int(f"model.{name}", getattr(self, name))
        for name in ("rope_theta", "norm_eps", "init_std"):
            _positive_number(f"model.{name}", getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) is not divisible by model.n_heads ({self.n_heads}); "
                f"choose n_heads from {_divisors(self.d_model)}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model.d_model / model.n_heads = {self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads}); "
                f"choose from {_divisors(self.n_heads)}"
            )
        for name in ("tie_embeddings", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name} must be true or false, got {getattr(self, name)!r}")
        return self


@dataclass
class TrainConfig:
    """Optimisation and run settings (used by ``openllm train``)."""

    micro_batch_size: int = 16
    grad_accum_steps: int = 1
    seq_len: int | None = None  # None: model.max_seq_len
    max_steps: int = 1000
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest)
    muon_lr: float = 0.02  # Muon's peak learning rate; the schedule scales it like lr
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    lr: float = 3e-4
    min_lr: float | None = None  # None: lr / 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on GPUs that support it, fp32 on CPU)
    compile: bool = False
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 200
    keep_last: int = 3
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0 disables
    log_every: int = 10
    seed: int = 1337
    distributed: str = "ddp"  # ddp | fsdp (only used under torchrun with more than one process)
    batch_warmup_steps: int = 0  # micro-batches per step grow from 1 to grad_accum_steps over these steps
    doc_aligned: bool = False  # training windows start at a document boundary
    fused_loss: str = "off"  # off | chunked | liger: output head + cross-entropy without fp32 logits
    fused_ops: bool = False  # Liger's RMSNorm and SwiGLU kernels (CUDA only)
    check_every: int = 1  # steps between host reads of the loss (the finite check); >1 lets the GPU run ahead

    def validate(self) -> TrainConfig:
        for name in (
            "micro_batch_size",
            "grad_accum_steps",
            "max_steps",
            "eval_every",
            "eval_batches",
            "save_every",
            "keep_last",
            "log_every",
        ):
            _positive_int(f"train.{name}", getattr(self, name))
        if self.seq_len is not None:
            _positive_int("train.seq_len", self.seq_len)
        for name in ("warmup_steps", "early_stop_patience", "seed"):
            _non_negative_int(f"train.{name}", getattr(self, name))
        _positive_number("train.lr", self.lr)
        if self.min_lr is not None:
            _non_negative_number("train.min_lr", self.min_lr)
            if self.min_lr > self.lr:
                raise ConfigError(
                    f"train.min_lr ({self.min_lr:g}) is above train.lr ({self.lr:g}): the schedule "
                    f"would raise the learning rate as it decays; set min_lr <= lr"
                )
        for name in ("weight_decay", "grad_clip"):
            _non_negative_number(f"train.{name}", getattr(self, name))
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {v!r}")
        _positive_number("train.eps", self.eps)
        if not isinstance(self.decay_fraction, (int, float)) or not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"train.decay_fraction must be in [0, 1], got {self.decay_fraction!r}")
        _choice("train.optimizer", self.optimizer, ("adamw", "muon"))
        _positive_number("train.muon_lr", self.muon_lr)
        _non_negative_number("train.muon_weight_decay", self.muon_weight_decay)
        if not isinstance(self.muon_momentum, (int, float)) or not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"train.muon_momentum must be in [0, 1), got {self.muon_momentum!r}")
        _non_negative_int("train.batch_warmup_steps", self.batch_warmup_steps)
        _positive_int("train.check_every", self.check_every)
        _choice("train.fused_loss", self.fused_loss, ("off", "chunked", "liger"))
        for name in ("doc_aligned", "fused_ops"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        _choice("train.schedule", self.schedule, ("cosine", "wsd", "constant"))
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice("train.distributed", self.distributed, ("ddp", "fsdp"))
        return self


@dataclass
class DataConfig:
    """Corpus preparation and tokenizer settings (used by prepare-data, train-tokenizer, tokenize)."""

    val_fraction: float = 0.01
    min_chars: int = 1
    tokenizer_model_type: str = "bpe"  # bpe | unigram
    character_coverage: float = 0.9995
    byte_fallback: bool = True

    def validate(self) -> DataConfig:
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        _non_negative_int("data.min_chars", self.min_chars)
        _choice("data.tokenizer_model_type", self.tokenizer_model_type, ("bpe", "unigram"))
        if not isinstance(self.character_coverage, (int, float)) or not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"data.character_coverage must be in (0, 1], got {self.character_coverage!r}")
        return self


_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


@dataclass
class Config:
    """The whole configuration of a run: model shape, training and data settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    name: str = "custom"

    def validate(self) -> Config:
        self.model.validate()
        self.train.validate()
        self.data.validate()
        seq_len = self.train.seq_len or self.model.max_seq_len
        if seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len ({seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        _check_keys("", data, [*_SECTIONS, "name"])
        sections = {}
        for key, klass in _SECTIONS.items():
            raw = data.get(key, {})
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{key} must be a JSON object, got {type(raw).__name__}")
            sections[key] = _build(key, klass, raw)
        name = data.get("name", "custom")
        return cls(**sections, name=str(name)).validate()

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some fields overridden, e.g. ``cfg.replace(train={"max_steps": 10})``; validated."""
        data = self.to_dict()
        for key, overrides in sections.items():
            if key == "name":
                data["name"] = overrides
                continue
            if key not in _SECTIONS:
                raise ConfigError(f"unknown config section {key!r}{_suggest(key, list(_SECTIONS))}")
            data[key] = {**data[key], **overrides}
        return Config.from_dict(data)


def _build(section: str, klass: type, raw: Mapping[str, Any]):
    names = [f.name for f in dataclasses.fields(klass)]
    _check_keys(f"{section}.", raw, names)
    for f in dataclasses.fields(klass):
        if f.name in raw:
            _check_type(f"{section}.{f.name}", str(f.type), raw[f.name])
    try:
        obj = klass(**raw)
    except TypeError as exc:  # pragma: no cover - _check_keys catches unknown keys first
        raise ConfigError(f"{section}: {exc}") from None
    return obj


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """The JSON type a field takes (its annotation: int, float, bool, str, optionally ``| None``), checked before
    the section's own validation compares values."""
    kind, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "float": number and math.isfinite(value),  # integers: the section's own checks word them better
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }.get(kind, True)
    if not ok:
        want = _TYPE_WORDS.get(kind, kind) + (" or null" if optional == "None" else "")
        raise ConfigError(f"{name} must be {want}, got {value!r}")


def _check_keys(prefix: str, raw: Mapping[str, Any], valid: list[str]) -> None:
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown key {prefix}{key}{_suggest(key, valid)}")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (valid keys: {', '.join(valid)})"


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def _positive_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _non_negative_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --- overrides (--set section.key=value) -----------------------------------------------------------------


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=3e-4", "model.n_layers=2"]`` -> ``{"train": {"lr": 0.0003}, "model": {"n_layers": 2}}``.

    A value is JSON (``3e-4``, ``true``, ``null``, ``"text"``) or a bare word for a text field
    (``train.schedule=wsd``); a later override of the same key wins. Every key must name a field and every value
    must have the field's type, else :class:`ConfigError` names the override and, for a bad key, the nearest
    valid one. Ranges and cross-field rules are checked when the overrides are applied (:meth:`Config.replace`).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        section, _, name = key.partition(".")
        if not sep or not key:
            raise ConfigError(f"config override {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=3e-4")
        klass = _SECTIONS.get(section)
        if klass is None or name not in _field_types(klass):
            raise ConfigError(f"config override {item!r}: unknown key {key}{_suggest_key(key)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word such as wsd
        out.setdefault(section, {})[name] = _typed(item, key, value, text, _field_types(klass)[name])
    return out


def apply_overrides(cfg: Config, items: Iterable[str] | None) -> Config:
    """``cfg`` with the ``section.key=value`` overrides applied and the result validated (no items: ``cfg``)."""
    sections = parse_overrides(items or ())
    return cfg.replace(**sections) if sections else cfg


def override_keys() -> list[str]:
    """Every key an override may set, e.g. ``train.lr``."""
    return [f"{section}.{name}" for section, klass in _SECTIONS.items() for name in _field_types(klass)]


def _field_types(klass: type) -> dict[str, tuple[str, ...]]:
    # annotations are strings here (``from __future__ import annotations``): "int", "float | None", ...
    return {f.name: tuple(t.strip() for t in str(f.type).split("|")) for f in dataclasses.fields(klass)}


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _typed(item: str, key: str, value: Any, text: str, types: tuple[str, ...]) -> Any:
    if value is None and "None" in types:
        return None
    if "bool" in types and isinstance(value, bool):
        return value
    if not isinstance(value, bool):
        if "int" in types and isinstance(value, int):
            return value
        if "float" in types and isinstance(value, (int, float)):
            return float(value)
        if "str" in types and isinstance(value, str):
            return value
    wanted = " or ".join(_TYPE_WORDS[t] for t in types if t in _TYPE_WORDS)
    if "None" in types:
        wanted += " or null"
    raise ConfigError(f"config override {item!r}: {key} takes {wanted}, got {text!r}")


def _suggest_key(key: str) -> str:
    keys = override_keys()
    section, _, name = key.partition(".")
    # the right name in the wrong section, or no section at all (lr -> train.lr, model.lr -> train.lr)
    same_name = [k for k in keys if k.split(".", 1)[1] == (name or section)]
    if same_name:
        return f" (did you mean {same_name[0]}?)"
    if section in _SECTIONS:
        names = list(_field_types(_SECTIONS[section]))
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {section}.{close[0]}?)"
        return f" ({section} keys: {', '.join(names)})"
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (sections: {', '.join(_SECTIONS)}; e.g. train.lr)"


# --- presets -----------------------------------------------------------------------------------------------

PRESETS_DIR = Path(__file__).resolve().parent / "configs"  # shipped in the wheel (package data)


def preset_names() -> list[str]:
    """The presets shipped with the package (``configs/*.json`` beside this module)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def find_preset(name: str) -> Path:
    """Path of the preset called ``name`` (tiny, small, medium, large)."""
    p = PRESETS_DIR / f"{name}.json"
    if name and "/" not in name and p.is_file():
        return p
    raise ConfigError(f"unknown preset {name!r}{_suggest(name, preset_names())}")


def load_config(path_or_preset: str | Path | Config) -> Config:
    """Load and validate a config from a JSON file or a preset name (``tiny``, ``small``, ...); a
    :class:`Config` (e.g. one with overrides applied) is returned as it is."""
    if isinstance(path_or_preset, Config):
        return path_or_preset
    # one rule: an existing file is read; otherwise a preset name (or the preset's old checkout path
    # configs/NAME.json, which older commands and notes still use) is looked up in the package's presets
    path = Path(path_or_preset)
    if not path.is_file():
        text = str(path_or_preset)
        if path.parent == Path("configs") and path.suffix == ".json" and path.stem in preset_names():
            path = find_preset(path.stem)
        elif path.suffix == ".json" or "/" in text:
            raise ConfigError(f"config file not found: {path} (presets: {', '.join(preset_names())})")
        else:
            path = find_preset(text)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8 JSON") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with model/train/data sections, found {type(data).__name__}")
    cfg = Config.from_dict(data)
    if cfg.name == "custom":
        cfg.name = path.stem
    return cfg
