"""SentencePiece tokenizer training and the :class:`Tokenizer` wrapper.

A tokenizer folder holds ``tokenizer.model`` (SentencePiece) and the Hugging Face files (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) built from the same model, so that
``transformers.AutoTokenizer.from_pretrained(DIR)`` gives the same ids as :meth:`Tokenizer.encode`.

Fixed special ids: ``pad=0, unk=1, bos=2, eos=3``; user tokens follow from 4, then the 256 byte pieces.

SentencePiece settings chosen so the Hugging Face pipeline reproduces it exactly and decoding is lossless:
identity normalisation (``prepare-data`` already applies NFC), no dummy prefix, no whitespace collapsing,
digits split, byte fallback (unknown characters become byte pieces, not ``<unk>``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import OpenLLMError
from .fsio import atomic_output_dir, write_bytes_atomic
from .hashing import sha256_file

__all__ = [
    "Tokenizer",
    "HFJsonTokenizer",
    "load_tokenizer",
    "train_tokenizer",
    "iter_training_lines",
    "SPECIAL_TOKENS",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "TOKENIZER_FILES",
    "CHAT_TEMPLATE",
    "CHAT_STOPS",
    "TOOL_CALL_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_SEPARATORS",
    "apply_chat_template",
    "sentencepiece_pb2",
]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
MODEL_FILE = "tokenizer.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_FILES = (MODEL_FILE, *HF_FILES, "openllm_tokenizer.json")
# The one chat template (Jinja, rendered as transformers renders ``chat_template``). Our models are base models
# trained on plain text with no chat tokens, so a conversation is a plain transcript they can continue:
#   <s>System: You are terse.\nUser: Hello!\nAssistant: Hi.</s>\nUser: What is 2+2?\nAssistant:
# ``developer`` is OpenAI's newer name for the system role. The reply is what the model writes after
# ``Assistant:``, up to EOS or the model starting the next turn ("\nUser:").
# Tools (OpenAI's ``tools``, transformers' ``apply_chat_template(..., tools=...)``) are plain lines too: one
# ``Function: {json of the function}`` line each, after the first system message (or first of all when there is
# none); an assistant's calls are ``<tool_call>{"name": "NAME", "arguments": {...}}</tool_call>`` (one a line,
# after its text if it has any) and a tool's result is a ``Tool: ...`` turn:
#   <s>Function: {"name": "get_verse", ...}\nUser: Quote John 3:16.\nAssistant: <tool_call>{"name": "get_verse",
#   "arguments": {"book": "John", "chapter": 3, "verse": 16}}</tool_call></s>\nTool: For God so loved...\nAssistant:
# The template uses only what transformers' Jinja, llama-cpp-python's and llama.cpp's minja all run (a macro
# with its arguments passed, ``is string``, ``tojson`` with transformers' spacing).
CHAT_TEMPLATE = (
    "{% macro render_tools(tools) %}"
    "{% for tool in tools %}"
    "{{ 'Function: ' + (tool['function'] if tool['function'] is defined else tool) | tojson + '\n' }}"
    "{% endfor %}"
    "{% endmacro %}"
    "{{ bos_token }}"
    "{% if tools and not (messages and messages[0]['role'] in ['system', 'developer']) %}"
    "{{ render_tools(tools) }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'developer'] %}"
    "{{ 'System: ' + message['content'] | trim + '\n' }}"
    "{% if loop.first and tools %}{{ render_tools(tools) }}{% endif %}"
    "{% elif message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] | trim + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = (message['content'] or '') | trim %}"
    "{{ 'Assistant: ' + content }}"
    "{% if message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set args = call['function']['arguments'] %}"
    "{{ ('\n' if content or not loop.first else '') + '<tool_call>{\"name\": \"' + call['function']['name']"
    " + '\", \"arguments\": ' + (args if args is string else args | tojson) + '}</tool_call>' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ eos_token + '\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{% set result = message['content'] if message['content'] is string else message['content'] | tojson %}"
    "{{ 'Tool: ' + result | trim + '\n' }}"
    "{% else %}"
    "{{ raise_exception('chat roles are system, user, assistant and tool, not ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# How a tool call is written in a reply (the template above writes the same text for an assistant's
# ``tool_calls``): the grammar of openllm.constrain makes the model write exactly this, and the server reads it
# back into OpenAI's ``tool_calls``.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_CALL_SEPARATORS = (", ", ": ")  # json.dumps's default spacing, which transformers' tojson also writes
# Where a reply ends when the model writes no EOS: the start of the template's next turn. Owned here, beside the
# template whose turns they are: the server stops at them, and the exports write them where other runtimes look
# (a one-token stop joins generation_config's eos_token_id; the GGUF lists them under openllm.chat.stop_strings).
CHAT_STOPS = ("\nUser:", "\nSystem:", "\nTool:")
# a "sentence" longer than this is cut into pieces for training (SentencePiece skips longer ones)
_MAX_SENTENCE_CHARS = 8192
DEFAULT_MAX_SENTENCES = 2_000_000


class Tokenizer:
    """A trained SentencePiece tokenizer loaded from a tokenizer folder (see module docstring)."""

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        self.model_path = Path(model_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except (RuntimeError, OSError) as exc:  # sentencepiece's own words for a file it cannot parse
            raise OpenLLMError(
                f"{self.model_path} is not a SentencePiece tokenizer model (damaged or another "
                f"format: {' '.join(str(exc).split())[:100]}); restore it or train one with "
                f"`openllm train-tokenizer`"
            ) from exc
        self.sha256 = sha256_file(self.model_path)
        self.dir = self.model_path.parent
        sp = self._sp
        got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise OpenLLMError(
                f"{self.model_path}: special ids pad/unk/bos/eos are {got}, expected (0, 1, 2, 3); "
                "train it with `openllm train-tokenizer`"
            )

    # -- loading and saving -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer folder (or a ``tokenizer.model`` file directly)."""
        p = Path(path)
        model = p if p.is_file() else p / MODEL_FILE
        if not model.is_file():
            raise OpenLLMError(
                f"no tokenizer at {p}: expected {model}; train one with "
                "`openllm train-tokenizer --data DIR --vocab-size N --out DIR`"
            )
        return cls(model)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Copy the tokenizer files into ``out_dir`` (creating it); Hugging Face files are rebuilt if missing."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() == self.dir.resolve():
            return out
        for name in TOKENIZER_FILES:
            src = self.dir / name
            if src.is_file():
                write_bytes_atomic(out / name, src.read_bytes())
        if not all((out / n).is_file() for n in HF_FILES):
            write_hf_files(out / MODEL_FILE, out)
        return out

    # -- the interface ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``bos``/``eos`` add the begin/end ids."""
        ids = self._sp.encode(text)
        if bos:
            ids.insert(0, BOS_ID)
        if eos:
            ids.append(EOS_ID)
        return ids

    def encode_batch(self, texts: Sequence[str], *, eos: bool = False, threads: int = 1) -> list[list[int]]:
        """Encode many texts at once (SentencePiece's C++ loop; ``threads`` > 1 uses its thread pool)."""
        out = self._sp.encode(list(texts), num_threads=threads)
        if eos:
            for ids in out:
                ids.append(EOS_ID)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids (pad, bos, eos) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    def encode_chat(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True, tools: Sequence[dict] | None = None
    ) -> list[int]:
        """Token ids of :func:`apply_chat_template`'s text, the BOS and EOS in it as their ids: the ids
        transformers' ``apply_chat_template(messages, tools=..., add_generation_prompt=...)`` gives for our
        export."""
        text = apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
        ids: list[int] = []
        for part in re.split(f"({re.escape(bos)}|{re.escape(eos)})", text):
            if part == bos:
                ids.append(BOS_ID)
            elif part == eos:
                ids.append(EOS_ID)
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    @property
    def user_tokens(self) -> list[str]:
        m = sentencepiece_pb2().ModelProto()
        m.ParseFromString(self.model_path.read_bytes())
        return [p.piece for p in m.pieces if p.type == sentencepiece_pb2().ModelProto.SentencePiece.USER_DEFINED]

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.dir)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


class HFJsonTokenizer:
    """The :class:`Tokenizer` interface over a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library), for
    folders that hold no ``tokenizer.model``, such as a fine-tune of our export saved by transformers 5.
    Special ids are looked up by their tokens (``tokenizer_config.json`` / ``special_tokens_map.json``, else
    ours); ``model_path`` is None, so formats that need the SentencePiece model (GGUF) refuse it."""

    model_path = None

    def __init__(self, json_path: str | os.PathLike):
        from tokenizers import Tokenizer as HFTokenizer

        self.json_path = Path(json_path)
        self.dir = self.json_path.parent
        try:
            self._hf = HFTokenizer.from_file(str(self.json_path))
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise OpenLLMError(
                f"{self.json_path} is not a tokenizer.json the tokenizers library reads (damaged or "
                f"another format: {' '.join(str(exc).split())[:100]})"
            ) from exc
        names = dict(SPECIAL_TOKENS)
        recorded: dict = {}
        for side in ("special_tokens_map.json", "tokenizer_config.json"):
            f = self.dir / side
            if f.is_file():
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except ValueError:
                    continue
                if side == "tokenizer_config.json":
                    recorded = data
                for key in names:
                    value = data.get(f"{key}_token")
                    value = value.get("content") if isinstance(value, dict) else value
                    if isinstance(value, str) and value:
                        names[key] = value
        ids = {key: self._hf.token_to_id(tok) for key, tok in names.items()}
        if ids["eos"] is None:
            raise OpenLLMError(
                f"{self.json_path}: no end-of-text token {names['eos']!r} in the vocabulary", path=self.json_path
            )
        self.pad_id = ids["pad"] if ids["pad"] is not None else ids["eos"]
        self.unk_id, self.bos_id, self.eos_id = ids["unk"], ids["bos"], ids["eos"]
        self._names = names
        # the SentencePiece model's checksum when these files were built from it and the vocabulary is unchanged
        # (data tokenized with that model is checked against it), else this file's own
        same = recorded.get("openllm_vocab_size") == self.vocab_size
        recorded_sha256 = recorded.get("openllm_tokenizer_sha256") if same else None
        self.sha256: str = recorded_sha256 or sha256_file(self.json_path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFJsonTokenizer:
        p = Path(path)
        return cls(p if p.is_file() else p / "tokenizer.json")

    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != self.dir.resolve():
            for name in HF_FILES:
                if (self.dir / name).is_file():
                    write_bytes_atomic(out / name, (self.dir / name).read_bytes())
        return out

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._hf.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, eos: bool = False, threads: int = 1) -> list[list[int]]:
        return [self.encode(t, eos=eos) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        piece = self._hf.id_to_token(int(i))
        if piece is None:  # as SentencePiece does for an id outside the vocabulary
            raise IndexError(f"piece id {int(i)} is out of range (vocabulary of {self.vocab_size})")
        return piece

    def piece_to_id(self, piece: str) -> int:
        i = self._hf.token_to_id(piece)
        if i is not None:
            return i
        if self.unk_id is None:  # no unknown token to stand for it
            raise KeyError(f"{piece!r} is not in the vocabulary, which has no unknown token")
        return self.unk_id

    def encode_chat(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True, tools: Sequence[dict] | None = None
    ) -> list[int]:
        text = apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            bos_token=self._names["bos"],
            eos_token=self._names["eos"],
        )
        return self._hf.encode(text, add_special_tokens=False).ids

    def __repr__(self) -> str:
        return f"HFJsonTokenizer({str(self.dir)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def sentencepiece_pb2() -> Any:
    """SentencePiece's protobuf module (``ModelProto``, ``TrainerSpec``). protobuf builds its classes when the
    module is imported, so a type checker sees none of them: typed as Any here, once."""
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


def load_tokenizer(path: str | os.PathLike) -> Tokenizer | HFJsonTokenizer:
    """The tokenizer of a folder: ``tokenizer.model`` (SentencePiece) when present, else ``tokenizer.json``."""
    p = Path(path)
    if p.is_file():
        return HFJsonTokenizer(p) if p.suffix == ".json" else Tokenizer(p)
    if (p / MODEL_FILE).is_file() or not (p / "tokenizer.json").is_file():
        return Tokenizer.load(p)
    return HFJsonTokenizer(p / "tokenizer.json")


# ---------------------------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------------------------
def apply_chat_template(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = SPECIAL_TOKENS["bos"],
    eos_token: str = SPECIAL_TOKENS["eos"],
    tools: Sequence[dict] | None = None,
) -> str:
    """The text of :data:`CHAT_TEMPLATE` for ``messages`` (dicts with ``role`` and ``content``; an assistant's
    ``tool_calls`` and ``tool`` results in OpenAI's shape) and ``tools`` (OpenAI's function list), rendered the
    way transformers' ``tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)`` renders it, so
    both give the same string. An unknown role is a user error."""
    try:
        return _chat_template().render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=list(tools) if tools else None,
        )
    except _ChatTemplateError as exc:
        raise OpenLLMError(str(exc)) from exc


class _ChatTemplateError(Exception):
    pass


def _raise(message: str):
    raise _ChatTemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_COMPILED = None


def _chat_template():
    global _COMPILED
    if _COMPILED is None:
        # transformers' settings (chat_template_utils._compile_jinja_template): a sandbox, trim/lstrip blocks
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        # transformers' tojson (and llama-cpp-python's): json.dumps, keys in order, no HTML escaping; Jinja's own
        # sorts keys and escapes '<', which would render tools differently from every other runtime
        env.filters["tojson"] = _tojson
        _COMPILED = env.from_string(CHAT_TEMPLATE)
    return _COMPILED


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def _input_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if (p / "train.jsonl").is_file():  # a prepared corpus: train on its train split only
                files.append(p / "train.jsonl")
            else:
                found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in (".txt", ".jsonl"))
                if not found:
                    raise OpenLLMError(
                        f"{p} holds no train.jsonl, .txt or .jsonl files to train a tokenizer on", path=p
                    )
                files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise OpenLLMError(f"tokenizer training input not found: {p}")
    return files


def iter_training_lines(files: Sequence[Path], *, field: str = "text") -> Iterator[str]:
    """Non-empty lines of the documents in ``files`` (.jsonl: the ``field`` of each object; else plain text).

    Lines, not documents, are SentencePiece's sentences: newlines are encoded by byte fallback.
    """
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            if path.suffix == ".jsonl":
                for lineno, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    try:
                        text = json.loads(raw)[field]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise OpenLLMError(
                            f"{path}:{lineno}: not a JSON object with a {field!r} string ({exc.__class__.__name__}); "
                            "run `openllm prepare-data` first"
                        ) from exc
                    for line in str(text).split("\n"):
                        yield from _chunks(line)
            else:
                for line in f:
                    yield from _chunks(line.rstrip("\n"))


def _chunks(line: str) -> Iterator[str]:
    if not line.strip():
        return
    while len(line) > _MAX_SENTENCE_CHARS:
        cut = line.rfind(" ", 0, _MAX_SENTENCE_CHARS)
        cut = cut if cut > 0 else _MAX_SENTENCE_CHARS
        yield line[:cut]
        line = line[cut:]
    yield line


def _sample_lines(lines: Iterable[str], cap: int, seed: int, progress: bool) -> tuple[list[str], int]:
    """Reservoir sample of at most ``cap`` lines (uniform, deterministic for a seed), shuffled."""
    from tqdm import tqdm

    rng = random.Random(seed)
    sample: list[str] = []
    n = 0
    for n, line in enumerate(tqdm(lines, desc="reading", unit=" lines", disable=not progress, mininterval=0.5), 1):
        if len(sample) < cap:
            sample.append(line)
        else:
            j = rng.randrange(n)
            if j < cap:
                sample[j] = line
    rng.shuffle(sample)
    return sample, n


def train_tokenizer(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = True,
    user_tokens: Sequence[str] = (),
    max_sentences: int = DEFAULT_MAX_SENTENCES,
    threads: int | None = None,
    seed: int = 0,
    field: str = "text",
    progress: bool = True,
) -> Tokenizer:
    """Train a SentencePiece tokenizer on ``inputs`` and write a tokenizer folder to ``out_dir``.

    ``inputs``: a prepared corpus folder (its ``train.jsonl``), .jsonl files (``field`` of each line) or text
    files. At most ``max_sentences`` lines, sampled uniformly with ``seed``, are used. Returns the loaded
    :class:`Tokenizer`.
    """
    if model_type not in ("bpe", "unigram"):
        raise OpenLLMError(f"tokenizer model type must be bpe or unigram, got {model_type!r}")
    n_fixed = 4 + len(user_tokens) + (256 if byte_fallback else 0)
    if not isinstance(vocab_size, int) or vocab_size <= n_fixed:
        raise OpenLLMError(
            f"vocab size {vocab_size} is too small: the special tokens{', byte pieces' if byte_fallback else ''} "
            f"and user tokens take {n_fixed} ids; use at least {n_fixed + 64}"
        )
    if vocab_size > 2**32 - 1:
        raise OpenLLMError(f"vocab size {vocab_size} is too large (ids are stored as uint32)")
    if not 0.0 < character_coverage <= 1.0:
        raise OpenLLMError(f"character coverage must be in (0, 1], got {character_coverage}")
    bad = [t for t in user_tokens if not t or t in SPECIAL_TOKENS.values()]
    if bad or len(set(user_tokens)) != len(user_tokens):
        raise OpenLLMError(f"user tokens must be distinct, non-empty and not a special token: {list(user_tokens)}")
    if max_sentences <= 0:
        raise OpenLLMError(f"max sentences must be positive, got {max_sentences}")

    files = _input_files(inputs)
    sentences, total = _sample_lines(iter_training_lines(files, field=field), max_sentences, seed, progress)
    if not sentences:
        raise OpenLLMError(f"no text to train a tokenizer on in {', '.join(map(str, files))}")

    out = Path(out_dir)
    # the folder is built beside --out and renamed into place: an existing folder is replaced only when it
    # is an earlier tokenizer (it holds openllm_tokenizer.json), never a folder of someone else's files
    with atomic_output_dir(out, owned_marker="openllm_tokenizer.json") as tmp:
        _train_into(
            tmp,
            sentences,
            total,
            files,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            user_tokens=user_tokens,
            max_sentences=max_sentences,
            seed=seed,
            threads=threads,
            progress=progress,
        )
    return Tokenizer.load(out)


def _train_into(
    out: Path,
    sentences: list[str],
    total: int,
    files: list[Path],
    *,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    byte_fallback: bool,
    user_tokens: Sequence[str],
    max_sentences: int,
    seed: int,
    threads: int | None,
    progress: bool,
) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    desc = f"training {model_type} tokenizer (vocab {vocab_size}, {len(sentences):,} of {total:,} lines)"
    spm.set_random_generator_seed(seed)
    try:
        with _elapsed_bar(desc, enabled=progress):
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=buf,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=byte_fallback,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                pad_piece=SPECIAL_TOKENS["pad"],
                unk_piece=SPECIAL_TOKENS["unk"],
                bos_piece=SPECIAL_TOKENS["bos"],
                eos_piece=SPECIAL_TOKENS["eos"],
                user_defined_symbols=list(user_tokens),
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                max_sentence_length=_MAX_SENTENCE_CHARS * 4 + 16,  # bytes; our chunks fit
                input_sentence_size=0,  # we sampled already
                num_threads=max(1, threads or os.cpu_count() or 1),
                minloglevel=2,
            )
    except RuntimeError as exc:
        msg = str(exc)
        m = re.search(r"Vocabulary size (?:is )?too high \((\d+)\).*?<= (\d+)", msg)
        if m:
            suggest = int(m.group(2))
            raise OpenLLMError(
                f"vocab size {vocab_size} is too large for this corpus ({total:,} lines): it supports at most "
                f"{suggest:,}; try --vocab-size {_round_down(suggest)}"
            ) from exc
        raise OpenLLMError(f"SentencePiece training failed: {msg.splitlines()[-1] if msg else exc}") from exc

    write_bytes_atomic(out / MODEL_FILE, buf.getvalue())
    write_hf_files(out / MODEL_FILE, out)
    info = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "character_coverage": character_coverage,
        "byte_fallback": byte_fallback,
        "user_tokens": list(user_tokens),
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "training_lines": len(sentences),
        "corpus_lines": total,
        "max_sentences": max_sentences,
        "seed": seed,
        "inputs": [str(f) for f in files],
        "sha256": sha256_file(out / MODEL_FILE),
    }
    write_bytes_atomic(out / "openllm_tokenizer.json", (json.dumps(info, indent=2) + "\n").encode())


@contextlib.contextmanager
def _elapsed_bar(desc: str, *, enabled: bool) -> Iterator[None]:
    """A bar showing elapsed time while a call without progress reports runs (SentencePiece releases the GIL
    while it trains, so a thread can refresh it)."""
    if not enabled:
        yield
        return
    import threading

    from tqdm import tqdm

    bar = tqdm(desc=desc, total=None, bar_format="{desc}: {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def _round_down(n: int) -> int:
    """A friendly vocab size not above ``n`` (a multiple of 64 where possible, which also suits GPUs)."""
    return n // 64 * 64 if n >= 128 else n


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face files
# ---------------------------------------------------------------------------------------------------------------
def build_hf_tokenizer(model_path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` that encodes and decodes exactly like the SentencePiece model at ``model_path``.

    Mirrors the settings :func:`train_tokenizer` uses (identity normalisation, no dummy prefix): spaces become
    ``▁``, then BPE merges ranked by piece score (or the unigram lattice), byte fallback; control pieces are
    special added tokens, user-defined pieces plain added tokens (SentencePiece never splits or merges them).
    """
    from tokenizers import AddedToken, Regex, decoders, normalizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE, Model, Unigram

    pb = sentencepiece_pb2()
    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    if ns.add_dummy_prefix or ns.remove_extra_whitespaces or ns.precompiled_charsmap:
        raise OpenLLMError(
            f"{model_path}: only tokenizers trained by `openllm train-tokenizer` can be converted", path=model_path
        )
    NORMAL, UNKNOWN, CONTROL, USER, _BYTE = 1, 2, 3, 4, 6
    pieces = list(proto.pieces)
    if ts.model_type == pb.TrainerSpec.BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == NORMAL}
        ranked = []
        for piece, (score, i) in normal.items():
            for k in range(1, len(piece)):
                left, right = piece[:k], piece[k:]
                if left in normal and right in normal:
                    ranked.append((-score, i, left, right))
        merges = [(left, right) for _, _, left, right in sorted(ranked)]
        model: Model = BPE(
            vocab=vocab,
            merges=merges,
            unk_token=pieces[ts.unk_id].piece,
            fuse_unk=True,
            byte_fallback=bool(ts.byte_fallback),
        )
    elif ts.model_type == pb.TrainerSpec.UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in pieces], unk_id=ts.unk_id, byte_fallback=bool(ts.byte_fallback))
    else:
        raise OpenLLMError(f"{model_path}: unsupported SentencePiece model type {ts.model_type}", path=model_path)

    tok = HFTokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" "), "▁")])
    dec: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
    if ts.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    tok.decoder = decoders.Sequence(dec)
    added = [
        AddedToken(p.piece, special=p.type in (CONTROL, UNKNOWN), normalized=False)
        for p in pieces
        if p.type in (CONTROL, UNKNOWN, USER)
    ]
    tok.add_tokens(added)
    return tok


def hf_tokenizer_config(
    *, model_max_length: int | None = None, sentencepiece_sha256: str | None = None, vocab_size: int | None = None
) -> dict:
    """``tokenizer_config.json`` for our tokenizer: the same behaviour on every transformers we admit (4.45 to
    5.x): no ``token_type_ids`` (Llama takes none, and generate() refuses unknown inputs), left padding (a batch
    of prompts then ends where generation starts), the chat template, and ``model_max_length`` = the model's
    context when known (so ``truncation=True`` cuts there). ``sentencepiece_sha256``/``vocab_size`` record which
    ``tokenizer.model`` the files were built from (transformers keeps unknown keys when it saves a tokenizer), so
    a folder saved without ``tokenizer.model`` still matches data tokenized with it."""
    provenance = {}
    if sentencepiece_sha256:
        provenance = {"openllm_tokenizer_sha256": sentencepiece_sha256, "openllm_vocab_size": int(vocab_size or 0)}
    return {
        # the generic fast class loads tokenizer.json as written; a model-specific class would rebuild the pipeline
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS["bos"],
        "eos_token": SPECIAL_TOKENS["eos"],
        "unk_token": SPECIAL_TOKENS["unk"],
        "pad_token": SPECIAL_TOKENS["pad"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": int(model_max_length) if model_max_length else 1_000_000_000,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
        **provenance,
    }


def write_hf_files(
    model_path: str | os.PathLike, out_dir: str | os.PathLike, *, model_max_length: int | None = None
) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` next to the model."""
    out = Path(out_dir)
    tok = build_hf_tokenizer(model_path)
    write_bytes_atomic(out / "tokenizer.json", tok.to_str(pretty=True).encode())
    special = {
        "bos_token": SPECIAL_TOKENS["bos"],
        "eos_token": SPECIAL_TOKENS["eos"],
        "unk_token": SPECIAL_TOKENS["unk"],
        "pad_token": SPECIAL_TOKENS["pad"],
    }
    config = hf_tokenizer_config(
        model_max_length=model_max_length,
        sentencepiece_sha256=sha256_file(model_path),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
    )
    write_bytes_atomic(out / "tokenizer_config.json", (json.dumps(config, indent=2) + "\n").encode())
    write_bytes_atomic(out / "special_tokens_map.json", (json.dumps(special, indent=2) + "\n").encode())
