"""openllm data upload PATH --repo OWNER/NAME"""

from __future__ import annotations

import argparse

from .common import add_hub_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    up = sub.add_parser(
        "upload",
        help="upload a data file or folder to a dataset repo with a dataset card",
        description="Upload raw text, a prepared corpus (report.json) or tokenized shards "
        "(meta.json) as one commit with a dataset card and SHA256SUMS. A folder "
        "holding a link out of itself is refused; a link to a file inside it is "
        "uploaded as that file.",
    )
    add_upload_arguments(up)


def add_upload_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``openllm data upload`` (also those of scripts/upload_training_data.py)."""
    p.add_argument("path", metavar="PATH", help="a file or a folder")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the dataset repo (created when missing)")
    p.add_argument("--license", default="other", help="license in the dataset card (default other)")
    p.add_argument("--language", default="en", help="language in the dataset card (default en)")
    p.add_argument("--source", default=None, help="where the text came from (default: from report.json)")
    p.add_argument(
        "--version",
        default=None,
        help="also tag this upload with a version name (immutable: a version that exists is refused, "
        "and the upload then changes nothing)",
    )
    p.add_argument("-m", "--message", default=None, help="commit message")
    add_hub_option(p)


def run(args: argparse.Namespace) -> int:
    from ..publish import upload_dataset

    res = upload_dataset(
        args.path,
        repo_id=args.repo,
        hub=args.hub,
        license=args.license,
        language=args.language,
        source=args.source,
        version=args.version,
        commit_message=args.message,
        progress=True,
    )
    tag = f"@{res.version}" if res.version else ""
    print(f"uploaded {len(res.files)} files to {res.repo_id}{tag} (commit {res.commit[:12]}) on {res.hub}")
    return 0
