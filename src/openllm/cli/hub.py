"""openllm hub push|versions|pull|list"""

from __future__ import annotations

import argparse

from .common import add_hub_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hub_command", metavar="SUBCOMMAND", required=True)
    push = sub.add_parser(
        "push",
        help="push a run or an export as a new model version",
        description="Push a run (its latest checkpoint) or an export folder to a model repo as "
        "one immutable version (on the local hub the commit and its version land together or not "
        "at all). Default version: the step in thousands "
        "(7000 -> 7k, 1500 -> 1.5k, 500 -> 500). An export folder holding a link "
        "out of itself is refused.",
    )
    push.add_argument("source", metavar="RUN_OR_EXPORT", help="a run folder or an export folder")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repo")
    push.add_argument(
        "--version",
        default=None,
        help="version name (default: from the step, e.g. 7k); letters, digits, '.', '_', '-'; "
        "HEAD, main, master and sync-* are reserved",
    )
    push.add_argument(
        "--force",
        action="store_true",
        help="replace an existing version (its tag moves to the new commit, in the same push)",
    )
    push.add_argument(
        "--license",
        default=None,
        help="license of the weights in the model card (default: from the training data: public "
        "domain for the embedded corpus, else stated as unknown)",
    )
    push.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (Hugging Face only; the local hub has no accounts)",
    )
    push.add_argument("--language", default="en", help="language in the model card (default en)")
    push.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="OWNER/NAME",
        help="dataset repo the model was trained on (card metadata; repeatable)",
    )
    push.add_argument("-m", "--message", default=None, help="commit message")
    versions = sub.add_parser("versions", help="list the versions of a model repo")
    versions.add_argument("repo", metavar="OWNER/NAME")
    pull = sub.add_parser("pull", help="download a model version into a folder")
    pull.add_argument("ref", metavar="OWNER/NAME@VERSION", help="a model version (no @VERSION: the latest)")
    pull.add_argument("--out", required=True, metavar="DIR", help="an empty or new folder")
    sub.add_parser("list", help="list the model repos on the hub and their versions")
    for sp in (push, versions, pull, sub.choices["list"]):
        add_hub_option(sp)


def run(args: argparse.Namespace) -> int:
    from .. import hub as H
    from ..publish import push_model

    if args.hub_command == "push":
        res = push_model(
            args.source,
            repo_id=args.repo,
            version=args.version,
            force=args.force,
            hub=args.hub,
            license=args.license,
            language=args.language,
            datasets=args.dataset,
            commit_message=args.message,
            progress=True,
            private=args.private,
        )
        print(f"pushed {res.repo_id}@{res.version} (commit {res.commit[:12]}, {len(res.files)} files) to {res.hub}")
        if res.weights_sha256:  # the pushed file's, which a reader can check; not the checkpoint's
            print(f"model.safetensors sha256 {res.weights_sha256}")
        return 0
    if args.hub_command == "versions":
        versions = H.model_versions(args.repo, hub=args.hub)
        if not versions:
            print(f"{args.repo} has no versions yet")
            return 0
        width = max(len(v.name) for v in versions)
        for v in versions:
            print(f"{v.name:<{width}}  {v.commit[:12]}  {v.date[:19].replace('T', ' ')}  {v.message}".rstrip())
        return 0
    if args.hub_command == "pull":
        folder = H.pull_model(args.ref, out=args.out, hub=args.hub)
        print(f"pulled {args.ref} into {folder}")
        return 0
    if args.hub_command == "list":
        hub = H.get_hub(args.hub)
        models = H.list_models(hub=hub)
        if not models:
            print(f"no model repos on {hub.describe()}")
        for repo_id, tags in models:
            shown = ", ".join(tags) if tags else "(no versions)"
            print(f"{repo_id}  {shown}")
        datasets = hub.list_repos(repo_type="dataset")
        for repo_id in datasets:
            print(f"{repo_id}  (dataset)")
        return 0
    raise AssertionError(args.hub_command)
