"""``openllm space sync``, ``status`` and ``rollback``: the Space kept in step with the main repository.

Steps: detect the changed files (content hashes against the state recorded
at the last sync) -> resolve dependencies, copy and generate (``build``) -> validate (hashes; ``import
training`` and the app answering HTTP in a clean environment) -> one atomic commit through the hub
interface, holding only the changed and removed files -> verify what landed (else roll back by itself) ->
record the new state (state file + a ``sync-<n>-<hash>`` tag).

Conflicts: when the Space's head is not the commit we last pushed and a file we would overwrite (or delete)
differs there from what we pushed, the sync stops and lists those files unless ``force``. Files that only
the Space has are never touched. Network failures (HubUnavailable) are retried with backoff and jitter; an
auth error fails at once.
"""

from __future__ import annotations

import glob
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import OpenLLMError
from ..hub import ConflictError, Hub, RevisionExists
from ..hub.factory import get_hub
from ..scratch import scratch_dir
from .build import BuildResult, render, source_commit, with_hardware, write
from .manifest import Manifest, load_manifest
from .retry import RetryPolicy, retry
from .state import TAG_RE, SyncRecord, SyncState, sha256_bytes, sha256_file, state_path, tag_name, tree_hashes
from .validate import ValidationError, validate_space

__all__ = ["SyncPlan", "SyncResult", "SyncConflict", "SyncError", "Syncer"]

REPO_TYPE = "space"
BRANCH = "main"
Log = Callable[[str], None]


class SyncConflict(OpenLLMError):
    """The Space was edited behind our back in files the sync would overwrite."""

    def __init__(self, message: str, files: list[str]):
        super().__init__(message)
        self.files = files


class SyncError(OpenLLMError):
    """The sync failed; the message says in which state it left the Space."""


@dataclass
class SyncPlan:
    """What a sync would do, computed without writing anything."""

    space: str
    head: str | None  # the Space's main now (None: no repository yet)
    last: SyncRecord | None  # the last sync recorded
    build: BuildResult
    space_files: dict[str, str]  # the Space's files at head (path -> sha256), when they were read
    uploads: list[str]
    deletes: list[str]
    conflicts: list[str]
    space_only: list[str]  # files only the Space has: kept
    diverged: bool  # head is not the commit we last pushed

    @property
    def changed(self) -> bool:
        return bool(self.uploads or self.deletes)

    def describe(self) -> list[str]:
        lines = [
            f"Space {self.space}: head {(self.head or 'none')[:12]}, last sync "
            + (f"{self.last.tag} ({self.last.commit[:12]})" if self.last else "none")
        ]
        if self.diverged and self.last:
            lines.append("the Space's head is not the commit of the last sync: it was changed there")
        lines.append(
            f"{len(self.uploads)} to upload, {len(self.deletes)} to delete, "
            f"{len(self.build.files) - len(self.uploads)} unchanged, {len(self.space_only)} Space-only kept"
        )
        lines += [f"  upload  {p}" for p in self.uploads[:50]]
        if len(self.uploads) > 50:
            lines.append(f"  ... and {len(self.uploads) - 50} more")
        lines += [f"  delete  {p}" for p in self.deletes]
        lines += [f"  CONFLICT {p} (edited in the Space)" for p in self.conflicts]
        return lines


@dataclass
class SyncResult:
    plan: SyncPlan
    commit: str | None = None
    record: SyncRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Syncer:
    """Syncs the Space built from ``root`` to ``space`` on ``hub`` (a Hub, or a ``--hub`` spec)."""

    def __init__(
        self,
        space: str | None = None,
        hub: Hub | str | None = None,
        root: str | Path | None = None,
        *,
        policy: RetryPolicy | None = None,
        log: Log = print,
        venv_cache: Path | None = None,
        hardware: str | None = None,
    ):
        self.manifest: Manifest = with_hardware(load_manifest(root), hardware)
        self.space = space or self.manifest.space_id
        if not self.space:
            raise OpenLLMError("no Space named: pass --space OWNER/NAME or set [space] id in space.toml")
        self.hub = get_hub(hub)
        self.policy = policy or RetryPolicy.from_env()
        self.log = log
        self.venv_cache = venv_cache
        self.state_file = state_path(f"{type(self.hub).__name__}:{self.hub.describe()}", self.space)

    # ---- plumbing
    def _call(self, what: str, fn):
        def on_retry(attempt: int, delay: float, exc: Exception) -> None:
            self.log(f"{what}: {exc} -- retry {attempt}/{self.policy.attempts - 1} in {delay:.1f} s")

        return retry(fn, what=what, policy=self.policy, on_retry=on_retry)

    def _check_auth(self) -> None:
        """A missing or rejected token fails here, before anything is built or pushed."""
        whoami = getattr(self.hub, "whoami", None)
        if callable(whoami):
            self._call("checking the token", whoami)

    def _head(self) -> tuple[str | None, dict[str, str]]:
        exists = self._call("reading the Space", lambda: self.hub.repo_exists(repo_id=self.space, repo_type=REPO_TYPE))
        if not exists:
            return None, {}
        refs = self._call(
            "reading the Space's refs", lambda: self.hub.list_refs(repo_id=self.space, repo_type=REPO_TYPE)
        )
        return refs.branches.get(BRANCH), refs.tags

    def _files_at(self, revision: str) -> dict[str, str]:
        """The Space's files at ``revision``: path -> sha256."""
        with scratch_dir("openllm-space-read-") as tmp:  # one a killed sync left goes now
            folder = self._call(
                f"downloading the Space at {revision[:12]}",
                lambda: self.hub.download(
                    repo_id=self.space, repo_type=REPO_TYPE, revision=revision, local_dir=Path(tmp) / "s"
                ),
            )
            return tree_hashes(folder)

    def owned(self, path: str) -> bool:
        """Could the build have put ``path`` in the Space? (Used when the state comes from the tags alone.)"""
        if path in self.manifest.generated:
            return True
        for rule in self.manifest.rules:
            t = rule.target
            if t.endswith("/") and path.startswith(t):
                return True
            if not t.endswith("/") and path == t:
                return True
        return False

    def load_state(self, tags: dict[str, str] | None = None) -> SyncState:
        """The local state file; without one (a fresh machine), the last ``sync-*`` tag on the Space."""
        state = SyncState.load(self.state_file, self.hub.describe(), self.space)
        if tags is None:
            return state
        tagged = sorted(((int(m.group(1)), t) for t in tags if (m := TAG_RE.match(t))), reverse=True)
        if tagged and (state.last is None or tagged[0][0] > state.last.n):
            n, tag = tagged[0]
            files = {p: h for p, h in self._files_at(tags[tag]).items() if self.owned(p)}
            self.log(f"state: none here newer than {tag}; recovered it from the Space's tag")
            state.history.append(SyncRecord(n=n, commit=tags[tag], tag=tag, files=files, kind="recovered"))
            state.save(self.state_file)
        return state

    def settle_pending(self, state: SyncState, head: str | None, tags: dict[str, str], *, write: bool = True) -> None:
        """A sync killed after its push and before its record left ``state.pending``: when its commit is in the
        Space's history since our last sync and the Space still holds its files, record it (and tag it) as the
        sync it was; otherwise its push never landed, or was undone, and it is forgotten. ``write=False`` (a dry
        run, status) settles it in memory only: no tag, no state file."""
        pending = state.pending
        if pending is None:
            return
        last = state.last
        landed = None
        if head is not None and (last is None or head != last.commit) and not (last and last.tag == pending.tag):
            commits = self._call(
                "reading the history",
                lambda: self.hub.list_commits(repo_id=self.space, repo_type=REPO_TYPE, revision=head),
            )
            for c in commits:
                if last is not None and c.commit_id == last.commit:
                    break  # back at our last sync: the pending push is not in the Space
                if f"[{pending.tag}]" in (c.message or "") + c.title:
                    landed = c.commit_id
                    break
        if landed is not None and head is not None:  # (landed is only found in the history of a head)
            there = self._files_at(head)
            if all(there.get(p) == h for p, h in pending.files.items()):
                if write and tags.get(pending.tag) != landed:
                    self._tag(pending.tag, landed, f"OpenLLM sync {pending.n}")
                    tags[pending.tag] = landed
                state.history.append(replace(pending, commit=landed))
                self.log(f"state: sync {pending.tag} was interrupted after its push; recorded it now")
        state.pending = None
        if write:
            state.save(self.state_file)

    def _next_n(self, state: SyncState, tags: dict[str, str]) -> int:
        on_hub = [int(m.group(1)) for t in tags if (m := TAG_RE.match(t))]
        return max([state.next_n(), *[n + 1 for n in on_hub]])

    # ---- plan
    def plan(self, *, write: bool = False) -> tuple[SyncPlan, SyncState, dict[str, str]]:
        """What a sync would do. ``write``: a sync interrupted after its push is recorded for good (tag and
        state file), as a real sync does; without it (dry run, status) nothing is written."""
        build = render(self.manifest)
        head, tags = self._head()
        state = self.load_state(tags)
        self.settle_pending(state, head, tags, write=write)
        last = state.last
        ours = dict(last.files) if last else {}
        diverged = head is not None and (last is None or head != last.commit)
        if head is None:
            space = {}
        elif diverged:
            space = self._files_at(head)
        else:
            space = {
                p: ours.get(p, "")
                for p in self._call(
                    "listing the Space's files",
                    lambda: self.hub.list_files(repo_id=self.space, repo_type=REPO_TYPE, revision=head),
                )
            }
            space.update({p: h for p, h in ours.items() if p in space})
        b = build.files
        uploads = sorted(p for p in b if space.get(p) != b[p])
        deletes = sorted(p for p in ours if p not in b and p in space)
        # edited there since our last sync, or a Space-only file the build would now overwrite
        conflicts = sorted(
            p for p in uploads + deletes if (diverged and space.get(p) != ours.get(p)) or (p in space and p not in ours)
        )
        space_only = sorted(p for p in space if p not in b and p not in ours)
        plan = SyncPlan(
            space=self.space,
            head=head,
            last=last,
            build=build,
            space_files=space,
            uploads=uploads,
            deletes=deletes,
            conflicts=conflicts,
            space_only=space_only,
            diverged=diverged,
        )
        return plan, state, tags

    # ---- sync
    def sync(self, *, dry_run: bool = False, force: bool = False, env_check: bool = True) -> SyncResult:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        self._check_auth()
        plan, state, tags = self.plan(write=not dry_run)
        timings["plan"] = time.perf_counter() - t0
        for line in plan.describe():
            self.log(line)
        result = SyncResult(plan=plan, timings=timings)
        if plan.conflicts and not force:
            raise SyncConflict(
                f"conflict: the Space {self.space} was changed since the last sync in {len(plan.conflicts)} file(s) "
                f"this sync would overwrite: {', '.join(plan.conflicts)}. Bring those edits into the main "
                "repository, or sync with --force to overwrite them (Space-only files are kept either way)",
                plan.conflicts,
            )
        if dry_run:
            self.log("dry run: nothing validated, nothing pushed")
            return result
        if not plan.changed:
            self.log("nothing to sync: the Space already has this build")
            return result
        with scratch_dir("openllm-space-sync-") as tmp:  # one a killed sync left goes now
            t = time.perf_counter()
            if env_check:  # the clean-environment check runs the whole tree: write it, check every hash
                out = Path(tmp) / "space"
                write(plan.build, self.manifest, out)
                validate_space(out, plan.build.files, env_check=True, cache=self.venv_cache, log=self.log)
                sources: dict[str, Path | bytes] = {p: out / p for p in plan.uploads}
            else:  # upload straight from the sources; what is uploaded is checked against the plan's hashes
                self.log("validation: clean-environment check skipped (--no-env-check)")
                sources = self._checked_sources(plan)
            timings["validate"] = time.perf_counter() - t
            t = time.perf_counter()
            result.commit, record = self._push(plan, state, tags, sources)
            timings["push"] = time.perf_counter() - t
        result.record = record
        timings["total"] = time.perf_counter() - t0
        self.log(
            f"synced: {record.tag} = commit {record.commit[:12]} ({record.uploaded} uploaded, "
            f"{record.deleted} deleted) in {timings['total']:.1f} s"
        )
        return result

    def _checked_sources(self, plan: SyncPlan) -> dict[str, Path | bytes]:
        """What each uploaded file is made from, each checked against the hash the plan was made with."""
        out: dict[str, Path | bytes] = {}
        bad = []
        for p in plan.uploads:
            src = plan.build.sources[p]
            if src == "generated":
                data = plan.build.contents[p]
                ok = sha256_bytes(data) == plan.build.files[p]
                out[p] = data
            else:
                path = self.manifest.root / src
                ok = path.is_file() and sha256_file(path) == plan.build.files[p]
                out[p] = path
            if not ok:
                bad.append(p)
        if bad:
            raise ValidationError(f"files changed while syncing: {', '.join(bad[:10])}; run the sync again")
        self.log(f"validation: {len(out)} uploaded files match their hashes")
        return out

    def _push(
        self, plan: SyncPlan, state: SyncState, tags: dict[str, str], sources: dict[str, Path | bytes]
    ) -> tuple[str, SyncRecord]:
        n = self._next_n(state, tags)
        tag = tag_name(n, plan.build.files)
        src = source_commit(self.manifest.root)
        message = (
            f"Sync {n} from the main repository{f' ({src[:12]})' if src else ''}: "
            f"{len(plan.uploads)} updated, {len(plan.deletes)} removed\n\n[{tag}]"
        )
        if plan.head is None:
            self._call(
                "creating the Space",
                lambda: self.hub.create_repo(repo_id=self.space, repo_type=REPO_TYPE, exist_ok=True),
            )
            plan.head, _ = self._head()
            if plan.head is not None:  # a new Space on Hugging Face starts with a commit of its own (.gitattributes)
                there = self._call(
                    "listing the new Space's files",
                    lambda: self.hub.list_files(repo_id=self.space, repo_type=REPO_TYPE, revision=plan.head),
                )
                plan.space_only = sorted(p for p in there if p not in plan.build.files)
        before = plan.head
        # recorded before the push: a kill from here on leaves a state the next run settles (settle_pending)
        state.pending = SyncRecord(
            n=n,
            commit="",
            tag=tag,
            files=dict(plan.build.files),
            source_commit=src,
            uploaded=len(plan.uploads),
            deleted=len(plan.deletes),
        )
        state.save(self.state_file)

        # one upload of a folder holding the changed files, the removed ones named by delete_patterns: over HTTP
        # on the Hugging Face hub (huggingface_hub's upload_folder: large and binary files go by LFS/Xet as the
        # hub asks), one git commit on the local hub. Exact paths, escaped: a name with [ * ? is no pattern
        deletes = [glob.escape(p) for p in plan.deletes]

        def commit_once() -> str:
            try:
                with scratch_dir("openllm-space-upload-") as tmp:
                    folder = _stage(Path(tmp) / "upload", plan.uploads, sources)
                    return self.hub.upload_folder(
                        repo_id=self.space,
                        repo_type=REPO_TYPE,
                        folder_path=folder,
                        commit_message=message,
                        delete_patterns=deletes or None,
                        parent_commit=before,
                    )
            except ConflictError:
                # after a cut connection the push may have landed: then the head is our commit
                head, _ = self._head()
                if head and self._is_ours(head, tag):
                    return head
                raise

        try:
            new = self._call("pushing the commit", commit_once)
        except ConflictError as exc:
            raise SyncConflict(f"conflict: {exc}; nothing was pushed; run the sync again", []) from exc
        self.log(f"pushed {new[:12]}")
        # post-push: the commit holds exactly the build (plus the Space-only files), and is tagged
        try:
            self._verify_landed(plan, new)
            head, _ = self._head()
            if head != new and not self._descends(head, new):
                raise ValidationError(f"the Space's main is {str(head)[:12]} after the push, not {new[:12]}")
            self._tag(tag, new, f"OpenLLM sync {n}")
        except Exception as exc:
            self._auto_rollback(before, new, state, exc)
            raise  # _auto_rollback raises; keeps type checkers quiet
        record = replace(state.pending, commit=new)
        state.pending = None
        state.history.append(record)
        state.save(self.state_file)
        return new, record

    def _verify_landed(self, plan: SyncPlan, commit: str) -> None:
        """The pushed commit holds the build's files and the Space-only ones (paths), and every uploaded file
        has its planned hash (read back from the hub). The unchanged files are the parent commit's, which
        the plan was made from: checking them again would make every sync as slow as a full one."""
        paths = set(
            self._call(
                "listing the pushed files",
                lambda: self.hub.list_files(repo_id=self.space, repo_type=REPO_TYPE, revision=commit),
            )
        )
        expected = set(plan.build.files) | set(plan.space_only)
        missing, extra = sorted(expected - paths), sorted(paths - expected)
        if missing or extra:
            raise ValidationError(
                f"the pushed commit {commit[:12]} does not hold the build: missing "
                f"{missing[:10]}, unexpected {extra[:10]}"
            )
        with scratch_dir("openllm-space-check-") as tmp:  # one a killed sync left goes now
            folder = self._call(
                "reading back the uploaded files",
                lambda: self.hub.download(
                    repo_id=self.space,
                    repo_type=REPO_TYPE,
                    revision=commit,
                    local_dir=Path(tmp) / "s",
                    paths=plan.uploads,
                ),
            )
            landed = tree_hashes(folder)
        bad = sorted(p for p in plan.uploads if landed.get(p) != plan.build.files[p])
        if bad:
            raise ValidationError(
                f"the pushed commit {commit[:12]} holds other content than the build in {', '.join(bad[:10])}"
            )
        self.log(f"verified: {len(plan.uploads)} uploaded files read back from the hub match their hashes")

    def _is_ours(self, commit: str, tag: str) -> bool:
        commits = self._call(
            "reading the history",
            lambda: self.hub.list_commits(repo_id=self.space, repo_type=REPO_TYPE, revision=commit),
        )
        return bool(commits) and f"[{tag}]" in (commits[0].message or "") + commits[0].title

    def _descends(self, head: str | None, commit: str) -> bool:
        if not head:
            return False
        commits = self._call(
            "reading the history", lambda: self.hub.list_commits(repo_id=self.space, repo_type=REPO_TYPE, revision=head)
        )
        return any(c.commit_id == commit for c in commits)

    def _tag(self, tag: str, commit: str, message: str) -> None:
        def once() -> None:
            try:
                self.hub.create_tag(repo_id=self.space, repo_type=REPO_TYPE, tag=tag, revision=commit, message=message)
            except RevisionExists:
                _, tags = self._head()
                if tags.get(tag) != commit:  # ours if an earlier, cut-off attempt made it
                    raise

        self._call(f"tagging {tag}", once)

    def _auto_rollback(self, before: str | None, new: str, state: SyncState, why: Exception) -> None:
        """A failure after the push: put the Space back as it was before it (a new commit), then fail."""
        self.log(f"post-push check failed ({why}); rolling back to {str(before)[:12]}")
        state.pending = None  # the push is undone: nothing to settle later
        if before is None:
            raise SyncError(
                f"the sync pushed {new[:12]} but failed after the push ({why}); there is no earlier "
                "commit to roll back to"
            ) from why
        try:
            back = self._call(
                "rolling back",
                lambda: self.hub.revert(
                    repo_id=self.space,
                    repo_type=REPO_TYPE,
                    to_revision=before,
                    commit_message=f"Roll back failed sync (commit {new[:12]}): {str(why)[:200]}",
                ),
            )
        except Exception as exc2:
            raise SyncError(
                f"the sync pushed {new[:12]} but failed after the push ({why}), and the rollback "
                f"failed too ({exc2}): run `openllm space rollback` when the hub is back"
            ) from why
        last = state.last
        if last is not None and last.commit == before:
            n = self._next_n(state, {})
            rec = SyncRecord(
                n=n, commit=back, tag=tag_name(n, last.files), files=dict(last.files), kind="auto-rollback"
            )
            try:
                self._tag(rec.tag, back, f"OpenLLM automatic rollback of {new[:12]}")
                state.history.append(rec)
                state.save(self.state_file)
            except Exception:  # the Space is right; only the bookkeeping tag is missing
                pass
        raise SyncError(
            f"the sync failed after the push ({why}); the Space was rolled back to the state of "
            f"{before[:12]} as commit {back[:12]}"
        ) from why

    # ---- rollback
    def rollback(self, to: str | None = None) -> SyncRecord:
        """Restore an earlier synced state (default: the one before the last) as a new commit."""
        self._check_auth()
        head, tags = self._head()
        if head is None:
            raise OpenLLMError(f"the Space {self.space} does not exist on {self.hub.describe()}: nothing to roll back")
        state = self.load_state(tags)
        self.settle_pending(state, head, tags)
        if to is None:
            done = [r for r in state.history]
            if len(done) < 2:
                raise OpenLLMError(
                    "there is no earlier sync to roll back to; name one with --to SYNC_ID (see `openllm space status`)"
                )
            target = done[-2]
        else:
            found = state.find(to)
            if found is None:
                # the Space's sync tags: a tag of another name, even one called `to`, is no sync
                syncs = {t: m for t in tags if (m := TAG_RE.match(t))}
                hit = next((t for t, m in syncs.items() if t == to or m.group(1) == to), None)
                if hit is None:
                    known = ", ".join(sorted(syncs)) or "none"
                    raise OpenLLMError(f"no sync {to!r} on the Space; known syncs: {known}")
                files = {p: h for p, h in self._files_at(tags[hit]).items() if self.owned(p)}
                found = SyncRecord(n=int(syncs[hit].group(1)), commit=tags[hit], tag=hit, files=files)
            target = found
        rev = target.tag if target.tag in tags else target.commit
        new = self._call(
            "rolling back",
            lambda: self.hub.revert(
                repo_id=self.space,
                repo_type=REPO_TYPE,
                to_revision=rev,
                commit_message=f"Roll back to {target.tag} ({target.commit[:12]})",
            ),
        )
        landed = {p: h for p, h in self._files_at(new).items() if p in target.files}
        if landed != target.files:
            raise SyncError(f"the rollback commit {new[:12]} does not hold {target.tag}'s files")
        n = self._next_n(state, tags)
        rec = SyncRecord(n=n, commit=new, tag=tag_name(n, target.files), files=dict(target.files), kind="rollback")
        self._tag(rec.tag, new, f"OpenLLM rollback to {target.tag}")
        state.history.append(rec)
        state.save(self.state_file)
        self.log(f"rolled back to {target.tag}: commit {new[:12]}, recorded as {rec.tag}")
        return rec

    # ---- status
    def status(self) -> dict:
        plan, state, tags = self.plan()
        return {
            "space": self.space,
            "hub": self.hub.describe(),
            "head": plan.head,
            "last": state.last,
            "history": state.history,
            "plan": plan,
            "state_file": str(self.state_file),
        }


def _stage(folder: Path, paths: list[str], sources: dict[str, Path | bytes]) -> Path:
    """A folder holding exactly ``paths``, each from its source (a file, or generated bytes)."""
    folder.mkdir(parents=True)
    for p in paths:
        dest = folder / p
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = sources[p]
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            shutil.copyfile(src, dest)
    return folder
