#!/usr/bin/env python3
"""Upload training data to a dataset repository with a dataset card.

    python scripts/upload_training_data.py PATH --repo OWNER/NAME [--hub local|hf|PATH] [--version V]

A thin wrapper over ``openllm data upload``: the same library function, the same options. It runs from the
main repository (package ``openllm``) and from the Space (the package copied as ``training/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _import():
    try:
        from openllm.cli.data import add_upload_arguments, run
        from openllm.errors import is_user_error
    except ImportError:  # in the Space: the package is training/ beside scripts/
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from training.cli.data import add_upload_arguments, run  # type: ignore[no-redef]
        from training.errors import is_user_error  # type: ignore[no-redef]
    return add_upload_arguments, run, is_user_error


def main(argv: list[str] | None = None) -> int:
    add_upload_arguments, run, is_user_error = _import()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_upload_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
