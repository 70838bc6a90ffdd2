"""Validation of what the user typed into the app: one clear message per bad field, no Gradio needed.

Each ``parse_*`` function takes the raw values the UI sends (numbers may arrive as floats, strings or None)
and returns a checked object, or raises :class:`FormError` whose message names the field as the UI labels it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RECIPES, Config, ConfigError, load_config, preset_names, recipe_model_keys
from ..errors import OpenLLMError
from ..sampling import SamplingParams
from .schema import TRAIN_FIELDS, FormField, field_for_key, form_values
from .workspace import WorkspaceError, check_name

__all__ = [
    "config_fields",
    "FormError",
    "TrainRequest",
    "SamplingRequest",
    "PushRequest",
    "CORPUS_EMBEDDED",
    "CORPUS_WORKSPACE",
    "CORPUS_UPLOAD",
    "preset_fields",
    "parse_train_form",
    "parse_sampling_form",
    "parse_push_form",
    "parse_hub_ref",
]

CORPUS_EMBEDDED = "Embedded corpus (King James Bible)"
CORPUS_WORKSPACE = "A file or folder in the workspace"
CORPUS_UPLOAD = "An uploaded file"

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class FormError(OpenLLMError):
    """A field of a form is missing or invalid; ``field`` is its label in the UI."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# --- numbers -------------------------------------------------------------------------------------------------


def _number(field: str, value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FormError(field, "a value is required")
    if isinstance(value, bool):
        raise FormError(field, f"must be a number, got {value!r}")
    try:
        x = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as exc:
        raise FormError(field, f"must be a number, got {value!r}") from exc
    if math.isnan(x) or math.isinf(x):
        raise FormError(field, f"must be a finite number, got {value!r}")
    return x


def _integer(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    x = _number(field, value)
    if x != int(x):
        raise FormError(field, f"must be a whole number, got {_fmt(value)}")
    n = int(x)
    if minimum is not None and n < minimum:
        raise FormError(field, f"must be at least {minimum}, got {n}")
    if maximum is not None and n > maximum:
        raise FormError(field, f"must be at most {maximum}, got {n}")
    return n


def _positive(field: str, value: Any, *, maximum: float | None = None) -> float:
    x = _number(field, value)
    if x <= 0:
        raise FormError(field, f"must be greater than 0, got {_fmt(value)}")
    if maximum is not None and x > maximum:
        raise FormError(field, f"must be at most {maximum:g}, got {_fmt(value)}")
    return x


def _non_negative(field: str, value: Any, *, maximum: float | None = None) -> float:
    x = _number(field, value)
    if x < 0:
        raise FormError(field, f"must be 0 or more, got {_fmt(value)}")
    if maximum is not None and x > maximum:
        raise FormError(field, f"must be at most {maximum:g}, got {_fmt(value)}")
    return x


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return str(value).strip() if isinstance(value, str) else repr(value)


def _choice(field: str, value: Any, choices) -> str:
    if value not in choices:
        raise FormError(field, f"choose one of {', '.join(map(str, choices))}, got {value!r}")
    return value


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class TrainRequest:
    """A checked training form: the run name, the full Config and where the text comes from."""

    run_name: str
    config: Config
    corpus_kind: str  # "embedded" | "workspace" | "upload"
    corpus_path: str | None  # workspace-relative path or the uploaded file's temporary path
    vocab_size: int
    field: str = "text"  # the text field of .jsonl/.parquet records


def preset_fields(preset: str) -> dict[str, Any]:
    """The form's values for a preset (what the UI shows after the user picks one)."""
    return {"model_size": preset, **form_values(load_config(preset))}


def recipe_fields(preset: str, recipe: str) -> dict[str, Any]:
    """The form's values that follow a recipe (what it sets, and the learning rate it scales) for a preset moved
    to it: what the UI changes after the user picks one, leaving the user's other edits."""
    cfg = load_config(preset).replace(train={"recipe": recipe})
    keys = {f"train.{k}" for k in RECIPES[recipe]["train"]} | {"train.lr", "train.recipe"}
    return {f.name: f.setting.get(cfg) for f in TRAIN_FIELDS if f.key in keys}


def _shape(cfg) -> dict[str, Any]:
    return {k: v for k, v in cfg.model.__dict__.items() if k != "vocab_size"}


def config_fields(source: Any) -> tuple[dict[str, Any], list[str]]:
    """The form's values for a saved config (a config file, or an earlier run's ``config.json``; a path or a
    Config), and the settings it holds that the form cannot (each as 'key: FILE's value -> the value used'),
    which take the matched preset's values. Its model shape must be one of the presets' (the form picks
    sizes by preset); other shapes are refused with a message saying how to train them."""
    what = "Config file"
    try:
        cfg = source if isinstance(source, Config) else load_config(Path(source))
    except (OSError, ValueError, ConfigError) as exc:
        raise FormError(what, str(exc)) from exc
    shape = _shape(cfg)
    match = next((n for n in preset_names() if _shape(load_config(n)) == shape), None)
    if match is None:
        dims = ", ".join(f"{k}={shape[k]}" for k in ("d_model", "n_layers", "n_heads", "max_seq_len") if k in shape)
        raise FormError(
            what,
            f"its model ({dims}) is none of the presets' sizes, which the app's form picks "
            f"from; train it from a terminal: openllm train --config FILE",
        )
    fields = {"preset": match, "model_size": match, **form_values(cfg)}
    given = cfg.to_dict()
    best: tuple[dict[str, Any], list[str]] | None = None
    for preset in [match, *[n for n in preset_names() if n != match]]:  # the preset that keeps the most
        try:
            rebuilt = parse_train_form(
                {**fields, "preset": preset, "run_name": "check", "corpus_kind": CORPUS_EMBEDDED}
            ).config.to_dict()
        except FormError:
            continue
        lost = []
        for section in ("model", "train", "data"):
            a, b = given.get(section) or {}, rebuilt.get(section) or {}
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    lost.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
        if best is None or len(lost) < len(best[1]):
            best = ({**fields, "preset": preset}, lost)
    if best is None:  # the form's own checks refuse its values (e.g. warmup longer than the run)
        parse_train_form({**fields, "run_name": "check", "corpus_kind": CORPUS_EMBEDDED})
    return best  # type: ignore[return-value]


def _typed(f: FormField, value: Any) -> Any:
    """A field's value as its setting's type (the page sends numbers as floats or text); its range and choices
    are the config's to check."""
    s = f.setting
    if s.type == "bool":
        return bool(value)
    if s.type == "str":
        return value
    if s.optional and (value is None or str(value).strip() == ""):
        return None
    if s.type == "int":
        return _integer(f.label, value)
    return _number(f.label, value)


def parse_train_form(values: Mapping[str, Any]) -> TrainRequest:
    """Check every training field and build the run's Config (preset + overrides, validated)."""
    presets = preset_names()
    run_name = values.get("run_name")
    try:
        run_name = check_name(run_name or "", "Run name")
    except WorkspaceError as exc:
        raise FormError("Run name", str(exc).removeprefix("Run name ").strip()) from exc
    preset = _choice("Preset", values.get("preset"), presets)
    size = _choice("Model size", values.get("model_size") or preset, presets)

    base = load_config(preset)
    shape = load_config(size).model
    # the size preset gives the shape; the head and init follow the form's recipe (train.recipe), not the size's
    model = {k: v for k, v in shape.__dict__.items() if k not in recipe_model_keys()}
    sections: dict[str, dict[str, Any]] = {"model": model, "train": {}, "data": {}}
    for f in TRAIN_FIELDS:
        section, _, name = f.key.partition(".")
        sections[section][name] = _typed(f, values.get(f.name))
    train = sections["train"]
    # settings the form does not show follow the ones it does: a short run still logs about 20 lines, the
    # training window fits the chosen model's context
    steps = train.get("max_steps", base.train.max_steps)
    train["log_every"] = max(1, min(base.train.log_every, steps // 20 or 1))
    if base.train.seq_len is not None and base.train.seq_len > shape.max_seq_len:
        train["seq_len"] = shape.max_seq_len
    try:
        config = base.replace(**sections, name=run_name).validate(new_tokenizer=True)
    except ConfigError as exc:
        at = field_for_key(exc.key)
        raise FormError(at.label if at else "Settings", exc.reason if at else str(exc)) from exc
    vocab = config.model.vocab_size

    kind = values.get("corpus_kind")
    field = (values.get("text_field") or "text").strip() or "text"
    if kind == CORPUS_EMBEDDED:
        return TrainRequest(run_name, config, "embedded", None, vocab)
    if kind == CORPUS_WORKSPACE:
        path = (values.get("corpus_path") or "").strip()
        if not path:
            raise FormError("Corpus path", "enter a path inside the workspace (e.g. corpora/my_text.txt)")
        return TrainRequest(run_name, config, "workspace", path, vocab, field)
    if kind == CORPUS_UPLOAD:
        upload = values.get("upload")
        if not upload:
            raise FormError("Upload", "choose a file to upload first")
        return TrainRequest(run_name, config, "upload", str(upload), vocab, field)
    raise FormError("Corpus", f"choose one of: {CORPUS_EMBEDDED}; {CORPUS_WORKSPACE}; {CORPUS_UPLOAD}")


# --- generation ----------------------------------------------------------------------------------------------


@dataclass
class SamplingRequest:
    prompt: str
    params: SamplingParams


# SamplingParams' names in its messages -> the form's labels
_SAMPLING_LABELS = {
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature",
    "top_k": "Top-k",
    "top_p": "Top-p",
    "repetition_penalty": "Repetition penalty",
    "seed": "Seed",
}


def parse_sampling_form(values: Mapping[str, Any]) -> SamplingRequest:
    """The Generate tab's settings as :class:`openllm.sampling.SamplingParams`: the form turns its text into
    numbers; which values are allowed is ``SamplingParams.validate``'s rule, as for ``openllm generate`` and the
    server."""
    prompt = values.get("prompt") or ""
    if not prompt.strip():
        raise FormError("Prompt", "type a prompt first")
    if len(prompt) > 20_000:
        raise FormError("Prompt", f"is too long ({len(prompt)} characters; at most 20000)")
    n = _integer("Max new tokens", values.get("max_new_tokens"), minimum=1, maximum=4096)
    top_k = _integer("Top-k", values.get("top_k"))
    top_p = _number("Top-p", values.get("top_p"))
    seed_raw = values.get("seed")
    seed = None
    if seed_raw is not None and str(seed_raw).strip() != "":
        seed = _integer("Seed", seed_raw, minimum=0, maximum=2**63 - 1)
    params = SamplingParams(
        max_new_tokens=n,
        temperature=_number("Temperature", values.get("temperature")),
        top_k=top_k or None,  # the form's 0 is "off"
        top_p=None if top_p == 1.0 else top_p,
        repetition_penalty=_number("Repetition penalty", values.get("repetition_penalty")),
        seed=seed,
    )
    try:
        params.validate()
    except ValueError as exc:
        name, _, reason = str(exc).partition(" ")
        raise FormError(_SAMPLING_LABELS.get(name, name), reason) from exc
    return SamplingRequest(prompt, params)


# --- hub -----------------------------------------------------------------------------------------------------


@dataclass
class PushRequest:
    run_name: str
    repo: str
    version: str | None


def parse_repo(value: Any, field: str = "Repository") -> str:
    repo = (value or "").strip()
    if not repo:
        raise FormError(field, "enter a repository as owner/name, e.g. me/tiny-bible")
    if not _REPO.match(repo) or ".." in repo:
        raise FormError(field, f"{repo!r} is not owner/name (letters, digits, '.', '_', '-')")
    return repo


def parse_push_form(values: Mapping[str, Any]) -> PushRequest:
    run = values.get("run_name")
    if not run:
        raise FormError("Run", "choose a run to push")
    try:
        run = check_name(run, "Run")
    except WorkspaceError as exc:
        raise FormError("Run", str(exc)) from exc
    repo = parse_repo(values.get("repo"))
    version = (values.get("version") or "").strip() or None
    if version is not None and not _VERSION.match(version):
        raise FormError("Version", f"{version!r} is not a valid version name (e.g. 7k, v1, step-600)")
    return PushRequest(run, repo, version)


def parse_hub_ref(value: Any, field: str = "Hub model") -> tuple[str, str]:
    """'owner/name@version' -> (repo, version)."""
    text = (value or "").strip()
    if "@" not in text:
        raise FormError(field, f"write owner/name@version, got {text!r}")
    repo, _, version = text.rpartition("@")
    repo = parse_repo(repo, field)
    if not _VERSION.match(version):
        raise FormError(field, f"{version!r} is not a valid version name")
    return repo, version
