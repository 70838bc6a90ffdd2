"""openllm space build | sync | status | rollback"""

from __future__ import annotations

import argparse
import sys
import time

from .common import add_hub_option


def _common(p: argparse.ArgumentParser, *, space: bool = True) -> None:
    p.add_argument("--root", default=None, help="the main repository (default: found from the current folder)")
    p.add_argument(
        "--hardware",
        default=None,
        help="the Space hardware to build for: cpu-basic (a CPU torch), zero-a10g (ZeroGPU), t4-small, "
        "a10g-small, ... (default: [readme] suggested_hardware in space.toml, else cpu-basic)",
    )
    if space:
        p.add_argument("--space", default=None, help="the Space, OWNER/NAME (default: [space] id in space.toml)")
        add_hub_option(p)
        p.add_argument(
            "--retries",
            type=int,
            default=None,
            help="attempts for each hub call on network errors (default 5; OPENLLM_SYNC_RETRIES)",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="space_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("build", help="build the Space's files from this repository by space.toml")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the Space's files")
    p.add_argument("--clean", action="store_true", help=argparse.SUPPRESS)  # an earlier build is always replaced
    _common(p, space=False)
    p = sub.add_parser("sync", help="build, validate and push the Space (only the changed files)")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="show what would be uploaded and deleted; push nothing")
    p.add_argument("--force", action="store_true", help="overwrite files that were edited in the Space")
    p.add_argument(
        "--no-env-check",
        action="store_true",
        help="skip the clean-environment check (import + app start); hashes are still checked",
    )
    p = sub.add_parser("status", help="the last sync, pending changes and conflicts")
    _common(p)
    p = sub.add_parser("rollback", help="restore an earlier synced state as a new commit")
    _common(p)
    p.add_argument("--to", default=None, help="a sync id (tag sync-N-..., or N); default: the one before the last")


def _log(msg: str) -> None:
    print(msg, flush=True)


def _syncer(args):
    from ..space.retry import RetryPolicy
    from ..space.sync import Syncer

    policy = RetryPolicy.from_env(attempts=args.retries)
    return Syncer(args.space, args.hub, args.root, policy=policy, log=_log, hardware=args.hardware)


def run(args: argparse.Namespace) -> int:
    cmd = args.space_command
    if cmd == "build":
        from ..space.build import build

        t0 = time.perf_counter()
        r = build(args.out, args.root, clean=args.clean, hardware=args.hardware)
        for note in r.notes:
            print(f"note: {note}", file=sys.stderr)
        gen = len(r.generated)
        print(
            f"built {len(r.files)} files ({len(r.files) - gen} synced, {gen} generated) in {r.out} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        print(f"app.py imports {len(r.closure)} modules of the Space; requirements.txt: {len(r.requirements)} packages")
        return 0
    if cmd == "sync":
        from ..space.sync import SyncConflict

        s = _syncer(args)
        try:
            s.sync(dry_run=args.dry_run, force=args.force, env_check=not args.no_env_check)
        except SyncConflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            for f in exc.files:
                print(f"  {f}", file=sys.stderr)
            return 3
        return 0
    if cmd == "status":
        s = _syncer(args)
        st = s.status()
        plan = st["plan"]
        print(f"Space     {st['space']} on {st['hub']}")
        print(f"head      {st['head'] or '(no repository yet)'}")
        last = st["last"]
        if last:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last.time))
            print(
                f"last sync {last.tag} ({last.kind}) commit {last.commit[:12]} at {when}, "
                f"{last.uploaded} uploaded, {last.deleted} deleted"
            )
        else:
            print("last sync none")
        print(f"history   {', '.join(r.tag for r in st['history'][-10:]) or 'none'}")
        print(f"pending   {len(plan.uploads)} to upload, {len(plan.deletes)} to delete")
        for p in plan.uploads[:30]:
            print(f"  upload  {p}")
        for p in plan.deletes:
            print(f"  delete  {p}")
        if plan.conflicts:
            print(f"conflicts {len(plan.conflicts)} (edited in the Space; sync stops unless --force)")
            for p in plan.conflicts:
                print(f"  {p}")
        else:
            print("conflicts none")
        if plan.space_only:
            print(f"space-only {len(plan.space_only)} kept: {', '.join(plan.space_only[:10])}")
        return 0
    if cmd == "rollback":
        s = _syncer(args)
        rec = s.rollback(args.to)
        print(f"rolled back: {rec.tag} = commit {rec.commit}")
        return 0
    raise AssertionError(cmd)
