"""``openllm.load(SOURCE)``: one entry point that turns anything holding a model into a ready model.

SOURCE is, in the order tried:

- a run folder (``config.json`` + ``checkpoints/step_NNNNNNNN/model.safetensors``): its latest checkpoint;
- a checkpoint folder (``step_NNNNNNNN/`` with ``model.safetensors``; the config comes from its
  ``state.json`` or the run's ``config.json`` two levels up);
- a native export (``config.json`` with ``"format": "openllm"`` + ``model.safetensors`` in our names);
- a Hugging Face export: ``openllm.json`` (our full Config) beside a Llama ``config.json`` and weights, or a
  bare Llama folder, whose shape comes from ``config.json``;
- a hub reference ``OWNER/NAME@VERSION`` (when the string is not an existing path): downloaded through
  ``openllm.hub.download_model`` and loaded as the folder it returns.

Weights are read from safetensors (never through pickle); a ``pytorch_model.bin`` is read with
``torch.load(weights_only=True)``. Loading copies values, so every route is bit-exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .device import AUTO, resolve_device
from .errors import InputNotFound, OpenLLMError
from .fsio import load_json
from .rundir import CHECKPOINTS, CONFIG, STATE, TOKENIZER, require_latest_checkpoint, step_of

__all__ = ["LoadedModel", "load", "detect_kind", "read_state_dict", "NATIVE_FORMAT", "OPENLLM_CONFIG_NAME"]

NATIVE_FORMAT = "openllm"
OPENLLM_CONFIG_NAME = "openllm.json"  # our full Config inside a Hugging Face export
_HUB_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?$")
# a SentencePiece model, or else a Hugging Face tokenizer.json (a folder saved by transformers)
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


@dataclass
class LoadedModel:
    """What :func:`load` returns. ``model`` is in eval mode on ``device``; ``tokenizer`` is the
    SentencePiece :class:`~openllm.tokenizer.Tokenizer` when the source has ``tokenizer.model``, else an
    :class:`~openllm.tokenizer.HFJsonTokenizer` over its ``tokenizer.json``, else None."""

    model: Any  # openllm.model.Transformer
    tokenizer: Any | None  # openllm.tokenizer.Tokenizer or HFJsonTokenizer
    config: Config
    source: str  # what the caller passed
    path: Path  # the folder the weights came from (the checkpoint folder for a run)
    kind: str  # run | checkpoint | native | hf
    step: int | None = None  # training step, where known
    tokenizer_dir: Path | None = None  # folder holding the tokenizer files
    hub_ref: str | None = None  # OWNER/NAME@VERSION when it came from a hub
    info: dict[str, Any] = field(default_factory=dict)


# --- public -------------------------------------------------------------------------------------------------


def load(source: str | Path, *, device: str = AUTO, hub: Any = None) -> LoadedModel:
    """Load a model, its tokenizer and its config from a run, a checkpoint, an export or a hub reference, onto
    ``device`` (``auto``, as everywhere: :func:`openllm.device.resolve_device`)."""
    device = resolve_device(device)
    text = str(source)
    path = Path(source).expanduser()
    if path.exists():
        loaded = _load_path(path, device=device)
        loaded.source = text
        return loaded
    if isinstance(source, str) and _HUB_REF.match(text) and not text.startswith((".", "/", "~")):
        from .hub import RepositoryNotFound, download_model  # lazy: the hub pulls in git and HTTP code

        try:
            folder = Path(download_model(text, hub=hub))
        except RepositoryNotFound as exc:
            if "@" in text:
                raise
            # no version: as likely a mistyped folder as a hub reference, so say both
            raise RepositoryNotFound(f"no folder {text!r} here ({Path.cwd()}) and {exc}") from exc
        loaded = _load_path(folder, device=device)
        loaded.source, loaded.hub_ref = text, text
        return loaded
    raise InputNotFound(
        f"no model at {text!r}: give a run folder, an export folder, or a hub reference OWNER/NAME@VERSION",
        path=path,
    )


def detect_kind(path: Path) -> str:
    """run | checkpoint | native | hf for a folder, or raise OpenLLMError saying what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise OpenLLMError(f"{path} is a file, not a folder: give a run folder or an export folder", path=path)
    if (path / CHECKPOINTS).is_dir():
        return "run"
    if step_of(path) is not None and _has_weights(path) and not (path / "config.json").is_file():
        return "checkpoint"
    cfg = load_json(path / "config.json") if (path / "config.json").is_file() else None
    if cfg is not None and cfg.get("format") == NATIVE_FORMAT:
        return "native"
    if (path / OPENLLM_CONFIG_NAME).is_file() or (cfg is not None and cfg.get("model_type") == "llama"):
        return "hf"
    if cfg is not None and "model" in cfg and isinstance(cfg["model"], dict):
        raise OpenLLMError(
            f"run {path} has no checkpoint yet (no checkpoints/ folder): train it longer or wait for the first save",
            path=path,
        )
    if cfg is not None and cfg.get("model_type"):
        raise OpenLLMError(f"{path}: model_type {cfg.get('model_type')!r} is not supported (only llama)", path=path)
    raise OpenLLMError(
        f"{path} holds no model: expected a run folder (checkpoints/), a native export "
        f"(config.json with format openllm) or a Hugging Face Llama export",
        path=path,
    )


def read_state_dict(folder: Path) -> dict[str, Any]:
    """Every tensor of a folder's weights: model.safetensors, a sharded safetensors index, or (for old
    Hugging Face folders) pytorch_model.bin read with ``weights_only=True``."""
    from .checkpoint import read_safetensors

    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(load_json(index)["weight_map"].values()))
        out: dict[str, Any] = {}
        for shard in shards:
            out.update(read_safetensors(folder / shard))
        return out
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        import torch

        try:
            return torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's own text tells users to turn the safety off: never repeat it
            raise OpenLLMError(
                f"{pt} cannot be read safely: it is damaged or holds more than tensors (a pickle can run code "
                f"when loaded, so it is refused); convert it to model.safetensors where it came from, or "
                f"export the model again with `openllm export RUN --format hf`",
                path=pt,
            ) from exc
    raise OpenLLMError(f"{folder} has no weights (model.safetensors)", path=folder)


# --- per kind ---------------------------------------------------------------------------------------------


def _load_path(path: Path, *, device: str) -> LoadedModel:
    kind = detect_kind(path)
    if kind == "run":
        ckpt = require_latest_checkpoint(path)
        config = _run_config(path, ckpt)
        state = read_state_dict(ckpt)
        tok_dir = _first_tokenizer_dir(path / TOKENIZER, ckpt / TOKENIZER, ckpt)
        step = _checkpoint_step(ckpt)
        return _finish(
            state,
            config,
            device,
            path=ckpt,
            kind="run",
            step=step,
            tok_dir=tok_dir,
            info={"run": str(path), "checkpoint": str(ckpt)},
        )
    if kind == "checkpoint":
        run = path.parent.parent
        config = _run_config(run, path)
        tok_dir = _first_tokenizer_dir(path / TOKENIZER, run / TOKENIZER, path)
        return _finish(
            read_state_dict(path),
            config,
            device,
            path=path,
            kind="checkpoint",
            step=_checkpoint_step(path),
            tok_dir=tok_dir,
            info={"checkpoint": str(path)},
        )
    if kind == "native":
        raw = dict(load_json(path / "config.json"))
        info = {k: raw.pop(k) for k in list(raw) if k not in ("model", "train", "data", "name")}
        config = _config_from(raw, path / "config.json")
        return _finish(
            read_state_dict(path),
            config,
            device,
            path=path,
            kind="native",
            step=info.get("step"),
            tok_dir=_first_tokenizer_dir(path, path / "tokenizer"),
            info=info,
        )
    # hf
    from .hf_compat import from_hf_state_dict, model_config_from_llama

    info = {}
    if (path / OPENLLM_CONFIG_NAME).is_file():
        raw = dict(load_json(path / OPENLLM_CONFIG_NAME))
        info = {k: raw.pop(k) for k in list(raw) if k not in ("model", "train", "data", "name")}
        config = _config_from(raw, path / OPENLLM_CONFIG_NAME)
    else:
        try:
            config = Config(model=model_config_from_llama(load_json(path / "config.json")), name=path.name)
        except (KeyError, TypeError) as exc:
            raise OpenLLMError(f"{path / 'config.json'}: not a Llama config (missing {exc})") from exc
    hf_state = read_state_dict(path)
    try:
        state = from_hf_state_dict(hf_state, config.model)
    except KeyError as exc:
        raise OpenLLMError(f"{path}: weights do not match a Llama model of this shape (missing {exc})") from exc
    return _finish(
        state,
        config,
        device,
        path=path,
        kind="hf",
        step=info.get("step"),
        tok_dir=_first_tokenizer_dir(path),
        info=info,
    )


def _finish(
    state: dict,
    config: Config,
    device: str,
    *,
    path: Path,
    kind: str,
    step: int | None,
    tok_dir: Path | None,
    info: dict,
) -> LoadedModel:
    model = _build_model(state, config, device)
    tokenizer = _load_tokenizer(tok_dir) if tok_dir is not None else None
    if tokenizer is not None and tokenizer.vocab_size > config.model.vocab_size:
        raise OpenLLMError(
            f"{tok_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.model.vocab_size}: the tokenizer does not belong to this model"
        )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        source=str(path),
        path=path,
        kind=kind,
        step=step,
        tokenizer_dir=tok_dir,
        info=info,
    )


def _build_model(state: dict, config: Config, device: str):
    import torch

    from .model import Transformer

    state = {_strip_prefix(k): v for k, v in state.items()}
    cfg = config.model
    if cfg.tie_embeddings:
        # one tensor under two names (safetensors' save_model keeps only one of them): keep the embedding,
        # the head follows it
        head = state.pop("lm_head.weight", None)
        if "tok_embeddings.weight" not in state and head is not None:
            state["tok_embeddings.weight"] = head
    with torch.device("cpu"):
        model = Transformer(cfg)
    expected = set(model.state_dict())
    if cfg.tie_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise OpenLLMError(
            f"weights do not match the config's model shape: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, tensor in model.state_dict().items():
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise OpenLLMError(
                f"weight {name} has shape {tuple(state[name].shape)}, the config says {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def _strip_prefix(name: str) -> str:
    # torch.compile and DDP wrap names; checkpoints written from a wrapped model still load
    for prefix in ("_orig_mod.", "module."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _run_config(run: Path, ckpt: Path) -> Config:
    state_file = ckpt / STATE
    if state_file.is_file():
        state = load_json(state_file)
        if isinstance(state.get("config"), dict):
            return _config_from(state["config"], state_file)
    if (run / CONFIG).is_file():
        return _config_from(load_json(run / CONFIG), run / CONFIG)
    raise OpenLLMError(f"{ckpt}: no config (neither {STATE}'s config nor {run / CONFIG})")


def _checkpoint_step(ckpt: Path) -> int | None:
    if (ckpt / STATE).is_file():
        step = load_json(ckpt / STATE).get("step")
        if isinstance(step, int):
            return step
    return step_of(ckpt)


def _config_from(raw: dict, where: Path) -> Config:
    raw = {k: v for k, v in raw.items() if k in ("model", "train", "data", "name")}
    try:
        return Config.from_dict(raw)
    except ConfigError as exc:  # the file named in front; the setting at fault and the reason kept
        raise ConfigError(f"{where}: {exc}", key=exc.key, reason=exc.reason) from exc


def _first_tokenizer_dir(*candidates: Path) -> Path | None:
    for name in _TOKENIZER_FILES:
        for d in candidates:
            if (d / name).is_file():
                return d
    return None


def _load_tokenizer(folder: Path):
    from .tokenizer import load_tokenizer

    return load_tokenizer(folder)


def _has_weights(d: Path) -> bool:
    return any((d / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
