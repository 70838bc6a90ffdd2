"""``openllm`` command line: parse arguments, call the library, print. No logic of its own.

Each command lives in ``openllm/cli/<module>.py`` with two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

Options that several commands share (``--hub``, ``--device``, ``--set``) come from :mod:`openllm.cli.common`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..redact import redact

__all__ = ["main", "COMMANDS"]

# name -> (module under openllm.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("quickstart", "the whole pipeline on the embedded corpus: data, tokenizer, train, evaluate, export"),
    "prepare-data": ("prepare_data", "clean, deduplicate and split raw text into train/val with a report"),
    "train-tokenizer": ("train_tokenizer", "train a SentencePiece tokenizer (also writes Hugging Face files)"),
    "tokenize": ("tokenize", "tokenize a prepared corpus into uint16/uint32 shards with meta.json"),
    "train": ("train", "train a model from a config and tokenized data (resumable, torchrun-aware)"),
    "finetune": ("finetune", "fine-tune a model on conversations (full or LoRA), loss on assistant tokens only"),
    "evaluate": ("evaluate", "val loss, perplexity, bits per byte, generations and downstream tasks"),
    "compare": ("compare", "put runs or models side by side and plot their loss curves"),
    "generate": ("generate", "generate text from a run, an export or a hub model@version"),
    "export": ("export", "export a run as native, Hugging Face, ONNX or GGUF"),
    "serve": ("serve", "serve a model over an OpenAI-compatible HTTP API"),
    "hub": ("hub", "push, pull and list versioned model repositories on a hub"),
    "data": ("data", "upload datasets to a hub with a dataset card"),
    "space": ("space", "build the Space from this repository and sync it to a hub"),
    "app": ("app", "the Gradio web app: train, monitor, generate, publish"),
    "info": ("info", "parameters and FLOPs per token of a config"),
}


def _module(name: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openllm",
        description="OpenLLM: train small language models from scratch and ship them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # only import the module of the command being run: --help stays fast
        if name == selected:
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected not in COMMANDS:
        selected = None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    mod = _module(args.command)
    debug = args.debug or os.environ.get("OPENLLM_DEBUG") == "1"
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback unless --debug
        from ..errors import DISK_FULL_HINT, disk_full_reason, is_disk_full, is_user_error, user_message

        if debug:  # the fields of each error in the chain, then Python prints the chain (causes included)
            _say_details(exc)
            raise
        # a user error is one of ours, or an OSError about a path the user gave; anything else is a bug: an
        # internal invariant, or a missing file that our own code should have had (the crash log, exit 1)
        if not is_user_error(exc, inputs=argv):
            _say(
                f"error: openllm {args.command} failed unexpectedly ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); {_crash_report(args.command, argv)}"
            )
            return 1
        message = " ".join(user_message(exc).split())  # one line, whatever the library put in its message
        if is_disk_full(exc) and DISK_FULL_HINT not in message:
            reason = disk_full_reason(exc)
            if reason and reason not in message:  # a library's wrapper ("unexpected pos …") hides the cause
                message = f"{message} ({reason})"
            message = f"{message}: {DISK_FULL_HINT}"
        _say(f"error: {message}")
        return 2


def _say(line: str) -> None:
    # arguments may hold bytes that are not UTF-8 (kept as surrogates): print them escaped, never crash on them
    line = redact(line)  # a token in a --hub URL or in a library's message is never printed
    sys.stderr.write(line.encode("utf-8", "backslashreplace").decode("utf-8", "replace") + "\n")
    sys.stderr.flush()


def _say_details(exc: BaseException) -> None:
    """``--debug``: the fields the errors of the chain carry (a hub's request id and message, a path, a state),
    one line each, outermost first."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        details = getattr(err, "details", None)
        fields = details() if callable(details) else {}
        if isinstance(fields, dict) and fields:
            _say(f"debug: {type(err).__name__}: " + ", ".join(f"{k}={v!r}" for k, v in fields.items()))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)


def _crash_report(command: str, argv: list[str]) -> str:
    """Write the traceback of an unexpected error to a log file; the sentence says where and what to do."""
    import time
    import traceback

    from ..hub.local import cache_root

    text = f"openllm {' '.join(argv)}\npython {sys.version.split()[0]} on {sys.platform}\n\n" + traceback.format_exc()
    text = redact(text)  # the user is asked to send this file: no token from a --hub URL or a message in it
    try:
        folder = cache_root() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text.encode("utf-8", "backslashreplace").decode("utf-8"), encoding="utf-8")
    except OSError:
        return "this is a bug in openllm: run the same command with --debug to see the traceback and report it"
    return (
        f"this is a bug in openllm: the traceback is in {path}; please report it with that file (--debug shows it here)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
