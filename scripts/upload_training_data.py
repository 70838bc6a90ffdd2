#!/usr/bin/env python3
"""Upload training data to a dataset repository with a dataset card (the seed's upload_training_data.py).

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
        from openllm.errors import is_user_error
        from openllm.hub.datasets import upload_dataset
    except ImportError:  # in the Space: the package is training/ beside scripts/
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from training.errors import is_user_error  # type: ignore[no-redef]
        from training.hub.datasets import upload_dataset  # type: ignore[no-redef]
    return upload_dataset, is_user_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", metavar="PATH", help="a data file or folder")
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the dataset repo")
    parser.add_argument("--license", default="other", help="license in the dataset card")
    parser.add_argument("--language", default="en", help="language in the dataset card")
    parser.add_argument("--source", default=None, help="where the text came from")
    parser.add_argument("--version", default=None, help="also tag the upload with this version")
    parser.add_argument("-m", "--message", default=None, help="commit message")
    parser.add_argument("--hub", default=None, help="local (default), hf, a hub folder, or a git URL")
    args = parser.parse_args(argv)
    upload_dataset, is_user_error = _import()
    try:
        res = upload_dataset(args.path, repo_id=args.repo, hub=args.hub, license=args.license,
                             language=args.language, source=args.source, version=args.version,
                             commit_message=args.message, progress=True)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"uploaded {len(res.files)} files to {res.repo_id} (commit {res.commit[:12]}) on {res.hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
