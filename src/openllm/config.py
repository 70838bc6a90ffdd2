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
from .fsio import parse_json

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
    "Setting",
    "settings",
    "setting",
    "parameter_count",
    "MAX_PARAMETERS",
    "RECIPES",
    "recipe_model_keys",
    "TRACKERS",
    "report_targets",
]

# Ceilings far above any model this package can train, so that a mistyped size is refused by arithmetic
# before anything (even a model on the meta device: one Python object per layer) is built.
MAX_PARAMETERS = 10**12
_MODEL_MAX = {
    "vocab_size": 1 << 24,
    "d_model": 1 << 17,
    "n_layers": 1000,
    "n_heads": 1 << 12,
    "n_kv_heads": 1 << 12,
    "d_ff": 1 << 20,
    "max_seq_len": 1 << 22,
}
_SEED_MAX = 2**63 - 1  # torch and numpy take 64-bit seeds; the signed range fits both
_INT_MAX = 2**63 - 1  # every count ends up in an int64 (a tensor, a schedule, a loader position)


# The training recipes that ``train.recipe`` switches between: the settings each one sets, and the scale of
# AdamW's learning rate (``train.lr``: embeddings, head and norms under Muon) against the classic rate. The
# speedrun's choice is benchmarks/gpu.md's "AdamW vs Muon + the chosen recipe": Muon + WSD (the last 40% decaying
# to 0) + untied head + zero-initialised projections + 3x AdamW rate reached medium's target in 0.44x the tokens.
RECIPES: dict[str, dict[str, Any]] = {
    "speedrun": {
        "train": {"optimizer": "muon", "schedule": "wsd", "decay_fraction": 0.4, "min_lr": 0.0},
        "model": {"tie_embeddings": False, "zero_init_proj": True},
        "lr_scale": 3.0,
    },
    "classic": {
        "train": {"optimizer": "adamw", "schedule": "cosine", "min_lr": None},
        "model": {"tie_embeddings": True, "zero_init_proj": False},
        "lr_scale": 1.0,
    },
}


def recipe_model_keys() -> set[str]:
    """The model settings a recipe sets (the head and init; never the shape)."""
    return {key for recipe in RECIPES.values() for key in recipe["model"]}


def _fill_recipe(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a config's sections) with what its ``train.recipe`` sets wherever ``data`` does not say (a
    preset names its recipe and only the settings it tunes); ``train.lr``, when absent, at the recipe's scale."""
    train = data.get("train")
    name = train.get("recipe") if isinstance(train, Mapping) else None
    recipe = RECIPES.get(name) if isinstance(name, str) else None  # anything else: validation names it
    if recipe is None:
        return dict(data)
    out = dict(data)
    for section in ("model", "train"):
        given = out.get(section, {})
        if isinstance(given, Mapping):
            out[section] = {**recipe[section], **given}
    if "lr" not in out["train"]:
        out["train"]["lr"] = TrainConfig.lr * recipe["lr_scale"]
    return out


def _switch_recipe(data: dict[str, Any], new: str) -> dict[str, Any]:
    """A whole config's sections (``to_dict``) moved to recipe ``new``: its settings set, the learning rate
    rescaled from the old recipe's scale to the new one's."""
    old = RECIPES.get(data["train"].get("recipe"), RECIPES["classic"])
    recipe = RECIPES[new]
    train = {**data["train"], **recipe["train"], "recipe": new}
    if _is_number(train.get("lr")):
        train["lr"] = train["lr"] * recipe["lr_scale"] / old["lr_scale"]
    return {**data, "model": {**data["model"], **recipe["model"]}, "train": train}


def _s(default: Any, label: str, help: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A setting's dataclass field with its label, help and choices: the one description of the setting that
    validation and the app's generated form read (:func:`settings`)."""
    return field(default=default, metadata={"label": label, "help": help, "choices": choices})


@dataclass
class ModelConfig:
    """Shape of the Llama-shaped decoder (RMSNorm, RoPE, SwiGLU, optional GQA)."""

    vocab_size: int = _s(32000, "Vocabulary size", "tokenizer pieces")
    d_model: int = _s(512, "Width", "the residual stream's size")
    n_layers: int = _s(6, "Layers", "transformer blocks")
    n_heads: int = _s(8, "Attention heads", "query heads per layer")
    n_kv_heads: int | None = _s(None, "Key/value heads", "grouped-query attention; empty: as many as the heads")
    d_ff: int | None = _s(None, "MLP width", "SwiGLU hidden width; empty: 8/3 of the width, a multiple of 64")
    max_seq_len: int = _s(1024, "Context length", "the longest sequence the model takes, in tokens")
    rope_theta: float = _s(10000.0, "RoPE base", "rotary embeddings' base frequency")
    norm_eps: float = _s(1e-5, "Norm epsilon", "RMSNorm's epsilon")
    tie_embeddings: bool = _s(True, "Tied embeddings", "the output head shares the input embedding's weights")
    dropout: float = _s(0.0, "Dropout", "in [0, 1)")
    init_std: float = _s(0.02, "Init std", "standard deviation of the initial weights")
    zero_init_proj: bool = _s(False, "Zero-init projections", "attention and MLP output projections start at 0")

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None and isinstance(self.d_model, int) and self.d_model > 0:
            self.d_ff = 64 * math.ceil(8 * self.d_model / 3 / 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """``n_kv_heads`` as an int: :meth:`__post_init__` sets an unset one to ``n_heads`` (no grouping)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ff_dim(self) -> int:
        """``d_ff`` as an int (:meth:`__post_init__` derives an unset one from ``d_model``; :meth:`validate`
        refuses a config where it could not)."""
        if self.d_ff is None:
            raise ConfigError("model.d_ff is not set and model.d_model gives none", key="model.d_ff")
        return self.d_ff

    def validate(self) -> ModelConfig:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            _positive_int(f"model.{name}", getattr(self, name))
            _at_most(f"model.{name}", getattr(self, name), _MODEL_MAX[name])
        for name in ("rope_theta", "norm_eps", "init_std"):
            _positive_number(f"model.{name}", getattr(self, name))
        _fraction("model.dropout", self.dropout)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) is not divisible by model.n_heads ({self.n_heads}); "
                f"choose n_heads from {_divisors(self.d_model)}",
                key="model.n_heads",
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model.d_model / model.n_heads = {self.head_dim} must be even for rotary embeddings",
                key="model.n_heads",
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads}); "
                f"choose from {_divisors(self.n_heads)}",
                key="model.n_kv_heads",
            )
        n = parameter_count(self)
        if n > MAX_PARAMETERS:
            raise ConfigError(
                f"the model would have {n:,} parameters, more than the {MAX_PARAMETERS:,} this package allows: "
                f"lower model.n_layers, model.d_model or model.vocab_size",
                key="model.n_layers",
                reason=f"{n:,} parameters is more than {MAX_PARAMETERS:,}",
            )
        _check_choices("model", self)
        return self


@dataclass
class TrainConfig:
    """Optimisation and run settings (used by ``openllm train``)."""

    micro_batch_size: int = _s(16, "Batch size", "sequences per micro-batch")
    grad_accum_steps: int = _s(1, "Gradient accumulation", "micro-batches per step")
    seq_len: int | None = _s(None, "Sequence length", "tokens per training window; empty: the model's context")
    max_steps: int = _s(1000, "Steps", "optimizer steps")
    recipe: str = _s(
        "classic",
        "Recipe",
        "one switch for the optimizer, schedule, head and init: speedrun (Muon for the blocks' matrices, AdamW at 3x "
        "the rate for the rest, WSD, untied head, zero-initialised projections: the presets' default) or classic "
        "(AdamW, cosine, tied head); settings given beside it win",
        tuple(RECIPES),
    )
    optimizer: str = _s(
        "adamw", "Optimizer", "adamw, or muon for the blocks' matrices (AdamW for the rest)", ("adamw", "muon")
    )
    muon_lr: float = _s(0.02, "Muon learning rate", "Muon's peak learning rate; the schedule scales it like lr")
    muon_momentum: float = _s(0.95, "Muon momentum", "in [0, 1)")
    muon_weight_decay: float = _s(0.0, "Muon weight decay", "0 = none")
    lr: float = _s(3e-4, "Learning rate", "peak, after warmup")
    min_lr: float | None = _s(None, "Final learning rate", "where the schedule ends; empty: lr / 10")
    weight_decay: float = _s(0.1, "Weight decay", "0 = none")
    beta1: float = _s(0.9, "Adam beta1", "in [0, 1)")
    beta2: float = _s(0.95, "Adam beta2", "in [0, 1)")
    eps: float = _s(1e-8, "Adam epsilon")
    grad_clip: float = _s(1.0, "Gradient clipping", "max gradient norm; 0 = off")
    schedule: str = _s("cosine", "Scheduler", "learning-rate schedule after warmup", ("cosine", "wsd", "constant"))
    warmup_steps: int = _s(100, "Warmup steps", "linear warmup")
    decay_fraction: float = _s(0.2, "Decay fraction", "wsd: share of steps spent decaying at the end")
    precision: str = _s(
        "auto",
        "Precision",
        "auto: bf16 on GPUs that support it, fp32 on CPU",
        ("auto", "fp32", "bf16", "fp16"),
    )
    compile: bool | None = _s(
        None, "Compile", "torch.compile the model; empty: on CUDA, off on CPU (where it does not pay)"
    )
    eval_every: int = _s(100, "Evaluate every", "steps between val-loss points")
    eval_batches: int = _s(20, "Evaluation batches", "batches per val-loss point")
    save_every: int = _s(200, "Save every", "steps between checkpoints")
    keep_last: int = _s(3, "Keep checkpoints", "the newest checkpoints kept (and the best)")
    early_stop_patience: int = _s(0, "Early-stop patience", "evaluations without improvement; 0 = off")
    log_every: int = _s(10, "Log every", "steps between metrics lines")
    seed: int = _s(1337, "Seed")
    distributed: str = _s("ddp", "Distributed", "under torchrun with more than one process", ("ddp", "fsdp"))
    batch_warmup_steps: int = _s(0, "Batch warmup", "micro-batches per step grow to the accumulation over these steps")
    doc_aligned: bool = _s(False, "Document-aligned", "training windows start at a document boundary")
    fused_loss: str = _s(
        "off", "Fused loss", "output head + cross-entropy without fp32 logits", ("off", "chunked", "liger")
    )
    fused_ops: bool = _s(False, "Fused ops", "Liger's RMSNorm and SwiGLU kernels (CUDA only)")
    check_every: int = _s(1, "Check every", "steps between host reads of the loss; >1 lets the GPU run ahead")
    report_to: str = _s(
        "tensorboard",
        "Report to",
        "trackers that mirror metrics.jsonl, comma-separated: tensorboard, trackio, wandb; none: metrics.jsonl only",
    )

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
            "check_every",
        ):
            _positive_int(f"train.{name}", getattr(self, name))
        if self.seq_len is not None:
            _positive_int("train.seq_len", self.seq_len)
        for name in ("warmup_steps", "early_stop_patience", "seed", "batch_warmup_steps"):
            _non_negative_int(f"train.{name}", getattr(self, name))
        _at_most("train.seed", self.seed, _SEED_MAX)
        _positive_number("train.lr", self.lr)
        if self.min_lr is not None:
            _non_negative_number("train.min_lr", self.min_lr)
            if self.min_lr > self.lr:
                raise ConfigError(
                    f"train.min_lr ({self.min_lr:g}) is above train.lr ({self.lr:g}): the schedule "
                    f"would raise the learning rate as it decays; set min_lr <= lr",
                    key="train.min_lr",
                    reason=f"must not exceed the learning rate ({self.lr:g}), got {self.min_lr:g}",
                )
        for name in ("weight_decay", "grad_clip", "muon_weight_decay"):
            _non_negative_number(f"train.{name}", getattr(self, name))
        for name in ("beta1", "beta2", "muon_momentum"):
            _fraction(f"train.{name}", getattr(self, name))
        for name in ("eps", "muon_lr"):
            _positive_number(f"train.{name}", getattr(self, name))
        if not isinstance(self.decay_fraction, (int, float)) or not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(
                f"train.decay_fraction must be in [0, 1], got {self.decay_fraction!r}",
                key="train.decay_fraction",
                reason=f"must be in [0, 1], got {_plain(self.decay_fraction)}",
            )
        report_targets(self.report_to)
        _check_choices("train", self)
        return self


@dataclass
class DataConfig:
    """Corpus preparation and tokenizer settings (used by prepare-data, train-tokenizer, tokenize)."""

    val_fraction: float = _s(0.01, "Validation fraction", "share of documents held out, in (0, 1)")
    min_chars: int = _s(1, "Shortest document", "documents with fewer characters are dropped")
    tokenizer_model_type: str = _s("bpe", "Tokenizer type", "SentencePiece's algorithm", ("bpe", "unigram"))
    character_coverage: float = _s(0.9995, "Character coverage", "share of characters the tokenizer covers")
    byte_fallback: bool = _s(True, "Byte fallback", "unknown characters become byte pieces")

    def validate(self) -> DataConfig:
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}",
                key="data.val_fraction",
                reason=f"must be in (0, 1), got {_plain(self.val_fraction)}",
            )
        _non_negative_int("data.min_chars", self.min_chars)
        if not isinstance(self.character_coverage, (int, float)) or not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(
                f"data.character_coverage must be in (0, 1], got {self.character_coverage!r}",
                key="data.character_coverage",
                reason=f"must be in (0, 1], got {_plain(self.character_coverage)}",
            )
        _check_choices("data", self)
        return self

    def tokenizer_vocab_floor(self) -> int:
        """The smallest vocabulary worth training a tokenizer to: its fixed ids (4 special tokens, and the 256
        byte pieces with byte fallback) and 64 learned pieces."""
        return 4 + (256 if self.byte_fallback else 0) + 64


TRACKERS = ("tensorboard", "trackio", "wandb")


def report_targets(value: Any) -> tuple[str, ...]:
    """``train.report_to`` as the trackers it names, in order, each once (``none``: no tracker); a
    :class:`ConfigError` for anything else."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else []
    if names == ["none"]:
        return ()
    if not names or any(n not in TRACKERS for n in names):
        raise ConfigError(
            f"train.report_to must be none or a comma-separated list of {', '.join(TRACKERS)}, got {value!r}",
            key="train.report_to",
            reason=f"none, or some of {', '.join(TRACKERS)} separated by commas, got {value!r}",
        )
    return tuple(dict.fromkeys(names))


_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


@dataclass
class Config:
    """The whole configuration of a run: model shape, training and data settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    name: str = "custom"

    @property
    def seq_len(self) -> int:
        """Tokens per training window: ``train.seq_len``, or the model's context when it is not set."""
        return self.train.seq_len or self.model.max_seq_len

    def validate(self, *, new_tokenizer: bool = False) -> Config:
        """Every rule about the settings; ``new_tokenizer``: a tokenizer will be trained for this config (the app,
        quickstart), so the vocabulary must leave it room to learn pieces."""
        self.model.validate()
        self.train.validate()
        self.data.validate()
        if self.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({self.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})",
                key="train.seq_len",
                reason=f"must not exceed the model's context ({self.model.max_seq_len}), got {self.seq_len}",
            )
        floor = self.data.tokenizer_vocab_floor()
        if new_tokenizer and self.model.vocab_size < floor:
            raise ConfigError(
                f"model.vocab_size ({self.model.vocab_size}) is too small to train a tokenizer: its special tokens"
                f"{' and byte pieces' if self.data.byte_fallback else ''} take {floor - 64} ids; use at least {floor}",
                key="model.vocab_size",
                reason=f"must be at least {floor} to train a tokenizer, got {self.model.vocab_size}",
            )
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
        data = _fill_recipe(data)
        for key, klass in _SECTIONS.items():
            raw = data.get(key, {})
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{key} must be a JSON object, got {type(raw).__name__}")
            sections[key] = _build(key, klass, raw)
        name = data.get("name", "custom")
        return cls(**sections, name=str(name)).validate()

    def replace(self, **sections: Any) -> Config:
        """A copy with some fields overridden, e.g. ``cfg.replace(train={"max_steps": 10})`` (a section's
        overrides as a mapping, ``name=`` as a string); validated."""
        data = self.to_dict()
        train = sections.get("train")
        new = train.get("recipe") if isinstance(train, Mapping) else None
        if isinstance(new, str) and new in RECIPES and new != data["train"].get("recipe"):
            data = _switch_recipe(data, new)  # the recipe first: the settings given beside it win
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
        raise ConfigError(f"{section}: {exc}") from exc
    return obj


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """The JSON type a field takes (its annotation: int, float, bool, str, optionally ``| None``), checked before
    the section's own validation compares values."""
    kind, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "float" and number and isinstance(value, int) and abs(value) > 2**1000:
        # math.isfinite and float() raise OverflowError on such an int: it is not a number a float can hold
        raise ConfigError(
            f"{name} must be a number, got {_short(abs(value))}", key=name, reason="must be a number of usual size"
        )
    ok = {
        "float": number and math.isfinite(value),  # integers: the section's own checks word them better
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }.get(kind, True)
    if not ok:
        want = _TYPE_WORDS.get(kind, kind) + (" or null" if optional == "None" else "")
        raise ConfigError(f"{name} must be {want}, got {value!r}", key=name, reason=f"must be {want}, got {value!r}")


def _check_keys(prefix: str, raw: Mapping[str, Any], valid: list[str]) -> None:
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown key {prefix}{key}{_suggest(key, valid)}")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (valid keys: {', '.join(valid)})"


def _plain(value: Any) -> str:
    """A value as a person typed it: 0 rather than 0.0, words without quotes."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return value if isinstance(value, str) else repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(name: str, words: str, value: Any, plain: str) -> None:
    raise ConfigError(f"{name} must be {words}, got {value!r}", key=name, reason=f"{plain}, got {_plain(value)}")


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        _refuse(name, "a positive integer", value, "must be at least 1" if _is_int(value) else "must be a whole number")
    _at_most(name, value, _INT_MAX)


def _non_negative_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        _refuse(
            name, "a non-negative integer", value, "must be 0 or more" if _is_int(value) else "must be a whole number"
        )
    _at_most(name, value, _INT_MAX)


def _at_most(name: str, value: int, ceiling: int) -> None:
    if value > ceiling:
        raise ConfigError(
            f"{name} must be at most {ceiling:,}, got {_short(value)}",
            key=name,
            reason=f"must be at most {ceiling:,}, got {_short(value)}",
        )


def _short(value: int) -> str:
    """An integer as a message shows it: a 5,000-digit value by its length, not its digits."""
    # str() of an int over 4,300 digits raises; the bit length gives the digits without converting
    return str(value) if value < 10**30 else f"a number of about {int(value.bit_length() * 0.30103) + 1:,} digits"


def parameter_count(m: ModelConfig) -> int:
    """The parameter count of a model shape by arithmetic (what :func:`openllm.model.param_report` counts on a
    built model): embeddings, the untied head, and per layer the fused QKV, output, SwiGLU and two norms."""
    d, hd = m.d_model, m.head_dim
    attn = d * (m.n_heads + 2 * m.kv_heads) * hd + m.n_heads * hd * d
    layer = attn + 3 * d * m.ff_dim + 2 * d
    return m.vocab_size * d * (1 if m.tie_embeddings else 2) + m.n_layers * layer + d


def _positive_number(name: str, value: Any) -> None:
    if not _is_number(value) or not value > 0 or math.isinf(value):
        _refuse(name, "a positive number", value, "must be greater than 0" if _is_number(value) else "must be a number")


def _non_negative_number(name: str, value: Any) -> None:
    if not _is_number(value) or not value >= 0 or math.isinf(value):
        _refuse(name, "a non-negative number", value, "must be 0 or more" if _is_number(value) else "must be a number")


def _fraction(name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        _refuse(name, "in [0, 1)", value, "must be in [0, 1)")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(choices)}, got {value!r}",
            key=name,
            reason=f"choose one of {', '.join(choices)}, got {value!r}",
        )


def _check_choices(section: str, obj: Any) -> None:
    """The settings of a section that take one of a few words, or true/false, checked against their field's own
    description (:func:`_s`), the list the app's form offers too."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("choices"):
            _choice(f"{section}.{f.name}", value, f.metadata["choices"])
        elif str(f.type) == "bool" and not isinstance(value, bool):
            _refuse(f"{section}.{f.name}", "true or false", value, "must be true or false")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --- the settings' descriptions (labels, help, choices) -----------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """What a setting is, for a person: its key (``train.lr``), label, help, type, choices and default."""

    key: str
    label: str
    help: str
    type: str  # int | float | bool | str
    optional: bool  # null allowed (the setting then follows another, e.g. train.seq_len -> model.max_seq_len)
    choices: tuple[str, ...]
    default: Any

    def get(self, cfg: Config) -> Any:
        section, _, name = self.key.partition(".")
        return getattr(getattr(cfg, section), name)


def settings() -> list[Setting]:
    """Every setting of a config, in file order."""
    out = []
    for section, klass in _SECTIONS.items():
        for f in dataclasses.fields(klass):
            kind, *rest = (t.strip() for t in str(f.type).split("|"))
            m = f.metadata
            out.append(
                Setting(f"{section}.{f.name}", m["label"], m["help"], kind, "None" in rest, m["choices"], f.default)
            )
    return out


def setting(key: str) -> Setting:
    """The description of one setting (``train.lr``); :class:`ConfigError` for an unknown key."""
    for s in settings():
        if s.key == key:
            return s
    raise ConfigError(f"unknown key {key}{_suggest_key(key)}")


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
            value = parse_json(text)
        except json.JSONDecodeError:
            value = text  # a bare word such as wsd
        except ValueError as exc:  # nested too deeply, or more digits than Python converts
            raise ConfigError(f"config override {key}=...: the value cannot be read ({exc})", key=key) from exc
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


def _typed(item: str, key: str, value: Any, text: str, types: tuple[str, ...]) -> Any:
    if value is None and "None" in types:
        return None
    if "bool" in types and isinstance(value, bool):
        return value
    if not isinstance(value, bool):
        if "int" in types and isinstance(value, int):
            return value
        if "float" in types and isinstance(value, (int, float)) and abs(value) <= 2**1000:
            return float(value)
        if "str" in types and isinstance(value, str):
            return value
    wanted = " or ".join(_TYPE_WORDS[t] for t in types if t in _TYPE_WORDS)
    if "None" in types:
        wanted += " or null"
    raise ConfigError(f"config override {_clip(item)!r}: {key} takes {wanted}, got {_clip(text)!r}")


def _clip(text: str, limit: int = 80) -> str:
    """A value as an error line quotes it: at most ``limit`` characters (a 5,000-digit value is not echoed)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


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
        data = parse_json(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except ValueError as exc:  # nested too deeply, or a number of more digits than Python converts
        raise ConfigError(f"{path}: cannot be read as a config ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8 JSON") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with model/train/data sections, found {type(data).__name__}")
    cfg = Config.from_dict(data)
    if cfg.name == "custom":
        cfg.name = path.stem
    return cfg
