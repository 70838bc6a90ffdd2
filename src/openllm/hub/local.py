"""LocalHub: repositories as bare git repositories, under a folder (``root``) or behind a git URL.

Layout: ``ROOT/models/OWNER/NAME.git``, ``ROOT/datasets/...``, ``ROOT/spaces/...`` (the same paths under a
``git://`` or ``http(s)://`` base URL). Every write is real git: a temporary repository fetches the branch,
builds the new tree with git's plumbing (no checkout, so nothing but the changed files is copied), commits and
pushes. The push is the only step that changes the hub and git applies it atomically, so an interrupted upload
leaves the previous commit, and a push that lost a race to another writer is rebuilt on the new head and
pushed again. A version (:meth:`LocalHub.upload_version`) is ONE ``git push --atomic`` of the branch and the
tag together: a version refused (its tag exists, or appeared meanwhile) or a push killed half-way leaves the
branch and every tag exactly as they were. Reads run git directly in the bare repository (a folder hub) or in
a fresh fetch (a URL hub).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import InputNotFound
from ..scratch import release, scratch_dir
from .base import CommitInfo, CommitOperation, CommitOperationAdd, CommitOperationDelete, GitRefs, Hub
from .errors import (
    ConflictError,
    EntryNotFound,
    HubError,
    RepositoryExists,
    RepositoryNotFound,
    RevisionExists,
    RevisionNotFound,
    UnsupportedOperation,
)
from .files import folder_files
from .gitcmd import GitFailed, classify_git_error, die_with_parent, git, is_push_race
from .ids import (
    REPO_TYPES,
    validate_path_in_repo,
    validate_repo_id,
    validate_repo_type,
    validate_revision,
    validate_tag,
)

__all__ = ["LocalHub", "default_hub_root", "cache_root", "BRANCH"]

BRANCH = "main"
_ZERO = "0" * 40
_FAST_PACK = (("core.bigFileThreshold", "8m"), ("core.compression", "1"), ("pack.compression", "1"))


def default_hub_root() -> Path:
    """``$OPENLLM_HUB``, else ``~/.cache/openllm/hub`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("OPENLLM_HUB")
    if env:
        return Path(env).expanduser()
    return cache_root() / "hub"


def cache_root() -> Path:
    """``$OPENLLM_CACHE``, else ``~/.cache/openllm``."""
    env = os.environ.get("OPENLLM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "openllm"


class LocalHub(Hub):
    """A hub of bare git repositories: ``LocalHub()`` (default root), ``LocalHub(root=PATH)``, or
    ``LocalHub(url="git://127.0.0.1:9418/")`` / ``LocalHub(url="http://host/base/")`` for repositories served
    over git's own protocols (there, ``create_repo`` and ``list_repos`` are unavailable)."""

    name = "local"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        url: str | None = None,
        timeout: float | None = None,
        max_attempts: int = 20,
    ) -> None:
        if root is not None and url is not None:
            raise ValueError("give root or url, not both")
        self.url = url.rstrip("/") + "/" if url else None
        self.root = None if url else Path(root if root is not None else default_hub_root()).expanduser().absolute()
        # a folder the user named (--hub PATH) must be a hub or a new one in an existing folder; the default
        # root ($OPENLLM_HUB, ~/.cache/openllm/hub) is ours to create with its parents
        self._named_root = url is None and root is not None
        self.timeout = timeout
        self.max_attempts = max_attempts

    def __repr__(self) -> str:  # reprs land in logs and tracebacks: the URL's credentials never do
        return f"LocalHub(url={self.describe()!r})" if self.url else f"LocalHub(root={str(self.root)!r})"

    def describe(self) -> str:
        """The root folder, or the URL without its credentials (messages must not leak a password)."""
        if self.url:
            return re.sub(r"^([a-z+]+://)[^/@]*@", r"\1", self.url)
        return str(self.root)

    # --- where things are ---------------------------------------------------------------------------------

    def repo_location(self, *, repo_id: str, repo_type: str = "model") -> str:
        """The path or URL git uses for the repository (what ``git clone`` takes)."""
        rel = f"{validate_repo_type(repo_type)}s/{validate_repo_id(repo_id)}.git"
        if self.root is None:  # a hub at a URL
            return f"{self.url}{rel}"
        return str(self.root / rel)

    def _where(self, repo_type: str, repo_id: str) -> str:
        return f"{repo_type} repo {repo_id} on {self.describe()}"

    def _git(self, args: Sequence[str], *, repo_type: str, repo_id: str, network: bool = False, **kw):
        return git(args, timeout=self.timeout, where=self._where(repo_type, repo_id), network=network, **kw)

    def _check_root(self, *, creating: bool = False) -> None:
        """Refuse a named hub folder that is a file, a folder of other things, or (when nothing exists there)
        a path whose parent is missing too: a mistyped ``--hub`` never creates folders. Decided before any
        write."""
        root = self.root
        if root is None or not self._named_root:
            return
        if root.is_dir():
            # hidden entries are a hub's own work in progress (another process creating its first repository)
            others = any(not p.name.startswith(".") for p in root.iterdir())
            if creating and not any((root / f"{t}s").is_dir() for t in REPO_TYPES) and others:
                raise HubError(
                    f"--hub {root} is a folder that is not a hub (no models/, datasets/ or spaces/ in it); "
                    f"name an empty or new folder, or an existing hub"
                )
            return
        if root.exists():
            raise HubError(f"--hub {root} is a file, not a hub folder; name a folder")
        if not creating:  # reading a hub that is not there: nothing to refuse, nothing is written
            return
        if not root.parent.is_dir():
            raise HubError(
                f"the hub folder {root} does not exist, and neither does {root.parent}; check --hub, or create "
                f"the folder first (mkdir -p {root})"
            )

    def _require(self, repo_type: str, repo_id: str) -> str:
        loc = self.repo_location(repo_id=repo_id, repo_type=repo_type)
        self._check_root()
        if self.root is not None and not (Path(loc) / "HEAD").is_file():
            missing = (
                " (that folder does not exist: check --hub)" if self._named_root and not self.root.is_dir() else ""
            )
            raise RepositoryNotFound(
                f"no {repo_type} repo {repo_id!r} on the local hub {self.root}{missing}; "
                f"push to it first or check the name (openllm hub list)",
                repo_id=repo_id,
                repo_type=repo_type,
            )
        return loc

    # --- repositories -------------------------------------------------------------------------------------

    def create_repo(
        self, *, repo_id: str, repo_type: str = "model", exist_ok: bool = False, private: bool = False
    ) -> str:
        if private:
            raise UnsupportedOperation(
                "the local hub has no accounts, so no private repositories: anyone who can "
                "read its folder can read every repo; use --hub hf for a private one",
                repo_id=repo_id,
                repo_type=repo_type,
            )
        loc = self.repo_location(repo_id=repo_id, repo_type=repo_type)
        if self.root is None:
            if self.repo_exists(repo_id=repo_id, repo_type=repo_type):
                if exist_ok:
                    return loc
                raise RepositoryExists(
                    f"{repo_type} repo {repo_id} already exists at {loc}", repo_id=repo_id, repo_type=repo_type
                )
            raise UnsupportedOperation(
                f"cannot create {repo_type} repo {repo_id} over {self.url}: git's protocols "
                f"cannot create repositories; create it on the server",
                repo_id=repo_id,
                repo_type=repo_type,
            )
        path = Path(loc)
        if (path / "HEAD").is_file():
            if exist_ok:
                return loc
            raise RepositoryExists(
                f"{repo_type} repo {repo_id} already exists at {path}", repo_id=repo_id, repo_type=repo_type
            )
        self._check_root(creating=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        # build beside the final place, then rename: a repo is either absent or complete
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            kw: dict[str, Any] = dict(repo_type=repo_type, repo_id=repo_id)
            self._git(["init", "--bare", "--quiet", f"--initial-branch={BRANCH}", str(tmp)], **kw)
            for key, value in _FAST_PACK + (
                ("uploadpack.allowFilter", "true"),
                ("uploadpack.allowAnySHA1InWant", "true"),
                ("http.receivepack", "true"),
                ("receive.fsckObjects", "true"),
                ("core.logAllRefUpdates", "true"),
            ):
                self._git(["config", key, value], git_dir=tmp, **kw)
            (tmp / "git-daemon-export-ok").touch()
            (tmp / "description").write_text(f"OpenLLM {repo_type} repository {repo_id}\n")
            # one initial commit (empty tree), so every clone has a branch to start from
            # the empty tree is built into git but not stored; clones need the object itself
            empty = self._git(["mktree"], git_dir=tmp, input=b"", **kw).stdout.decode().strip()
            commit = (
                self._git(["commit-tree", "--no-gpg-sign", empty, "-m", "initial commit"], git_dir=tmp, input=b"", **kw)
                .stdout.decode()
                .strip()
            )
            self._git(["update-ref", f"refs/heads/{BRANCH}", commit], git_dir=tmp, **kw)
            try:
                os.rename(tmp, path)
            except OSError as exc:
                if (path / "HEAD").is_file():  # another process created it meanwhile
                    if exist_ok:
                        return loc
                    raise RepositoryExists(
                        f"{repo_type} repo {repo_id} already exists at {path}", repo_id=repo_id, repo_type=repo_type
                    ) from exc
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return loc

    def repo_exists(self, *, repo_id: str, repo_type: str = "model") -> bool:
        loc = self.repo_location(repo_id=repo_id, repo_type=repo_type)
        if self.root is not None:
            self._check_root(creating=True)  # a push asks this first: a hub it could not create is refused now
            return (Path(loc) / "HEAD").is_file()
        try:
            self._ls_remote(loc, repo_type, repo_id)
        except RepositoryNotFound:
            return False
        return True

    def list_repos(self, *, repo_type: str = "model") -> list[str]:
        validate_repo_type(repo_type)
        if self.root is None:
            raise UnsupportedOperation(f"cannot list repositories over {self.url}: git's protocols have no listing")
        self._check_root()
        base = self.root / f"{repo_type}s"
        if not base.is_dir():
            return []
        return sorted(
            f"{p.parent.name}/{p.name[:-4]}"
            for p in base.glob("*/*.git")
            if (p / "HEAD").is_file() and not p.name.startswith(".")
        )

    # --- refs and history ---------------------------------------------------------------------------------

    def _ls_remote(self, loc: str, repo_type: str, repo_id: str) -> dict[str, str]:
        out = self._git(["ls-remote", loc], repo_type=repo_type, repo_id=repo_id, network=True).stdout.decode()
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        return refs

    def list_refs(self, *, repo_id: str, repo_type: str = "model") -> GitRefs:
        loc = self._require(repo_type, repo_id)
        refs = self._ls_remote(loc, repo_type, repo_id)
        out = GitRefs()
        for name, sha in refs.items():
            if name.startswith("refs/heads/"):
                out.branches[name[len("refs/heads/") :]] = sha
            elif name.startswith("refs/tags/") and not name.endswith("^{}"):
                tag = name[len("refs/tags/") :]
                out.tags[tag] = refs.get(name + "^{}", sha)  # peeled: the commit an annotated tag marks
        return out

    @contextlib.contextmanager
    def _reader(self, repo_type: str, repo_id: str, *, depth: int | None = None) -> Iterator[str]:
        """A git dir holding the repo's branches and tags: the bare repo itself, or a fresh fetch of the URL."""
        loc = self._require(repo_type, repo_id)
        if self.root is not None:
            yield loc
            return
        with self._workspace(loc, repo_type, repo_id) as ws:
            args = ["fetch", "--quiet", "--no-tags", "--prune"]
            if depth:
                args.append(f"--depth={depth}")
            self._git(
                args + [loc, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                git_dir=ws,
                repo_type=repo_type,
                repo_id=repo_id,
                network=True,
            )
            yield ws

    def _resolve(self, gd: str, revision: str | None, repo_type: str, repo_id: str) -> str:
        rev = validate_revision(revision) if revision is not None else BRANCH
        candidates = [f"refs/tags/{rev}", f"refs/heads/{rev}"] if not rev.startswith("refs/") else [rev]
        if 4 <= len(rev) <= 40 and all(c in "0123456789abcdef" for c in rev.lower()):
            candidates.append(rev)
        for cand in candidates:
            proc = self._git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{cand}^{{commit}}"],
                git_dir=gd,
                repo_type=repo_type,
                repo_id=repo_id,
                check=False,
            )
            if proc.returncode == 0:
                return proc.stdout.decode().strip()
        tags = self._git(["tag", "--list"], git_dir=gd, repo_type=repo_type, repo_id=repo_id).stdout.decode().split()
        known = f"; versions: {', '.join(tags)}" if tags else "; it has no versions yet"
        raise RevisionNotFound(
            f"{repo_type} repo {repo_id} has no revision {rev!r}{known}", repo_id=repo_id, repo_type=repo_type
        )

    def resolve(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> str:
        """The commit id that ``revision`` (tag, branch or commit; default main) names."""
        with self._reader(repo_type, repo_id) as gd:
            return self._resolve(gd, revision, repo_type, repo_id)

    def list_commits(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> list[CommitInfo]:
        with self._reader(repo_type, repo_id) as gd:
            sha = self._resolve(gd, revision, repo_type, repo_id)
            fmt = "%H%x00%P%x00%an%x00%aI%x00%s%x00%B%x1e"
            out = self._git(
                ["log", f"--format={fmt}", sha], git_dir=gd, repo_type=repo_type, repo_id=repo_id
            ).stdout.decode("utf-8", "replace")
        commits = []
        for rec in out.split("\x1e"):
            rec = rec.strip("\n")
            if not rec:
                continue
            h, parents, author, date, title, body = rec.split("\x00", 5)
            commits.append(
                CommitInfo(
                    commit_id=h,
                    title=title,
                    message=body.strip(),
                    authors=[author],
                    created_at=datetime.fromisoformat(date),
                    parents=parents.split(),
                )
            )
        return commits

    def _tree(self, gd: str, sha: str, repo_type: str, repo_id: str) -> list[tuple[str, str, str]]:
        """(mode, blob id, path) of every file of the commit."""
        out = self._git(
            ["ls-tree", "-r", "-z", "--full-tree", sha], git_dir=gd, repo_type=repo_type, repo_id=repo_id
        ).stdout.decode("utf-8", "surrogateescape")
        entries = []
        for item in out.split("\x00"):
            if not item:
                continue
            meta, _, path = item.partition("\t")
            mode, kind, oid = meta.split()
            if kind == "blob":
                entries.append((mode, oid, path))
        return entries

    def list_files(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> list[str]:
        with self._reader(repo_type, repo_id) as gd:
            sha = self._resolve(gd, revision, repo_type, repo_id)
            return sorted(p for _, _, p in self._tree(gd, sha, repo_type, repo_id))

    def tag_info(self, *, repo_id: str, repo_type: str = "model") -> dict[str, dict]:
        """Per tag: ``commit``, ``message`` and ``date`` (the annotated tag's, ISO 8601)."""
        with self._reader(repo_type, repo_id) as gd:
            fmt = (
                "%(refname:strip=2)%00%(*objectname)%00%(objectname)%00%(taggerdate:iso-strict)%00"
                "%(creatordate:iso-strict)%00%(contents:subject)"
            )
            out = self._git(
                ["for-each-ref", f"--format={fmt}", "refs/tags"], git_dir=gd, repo_type=repo_type, repo_id=repo_id
            ).stdout.decode("utf-8", "replace")
        info = {}
        for line in out.splitlines():
            name, peeled, obj, tdate, cdate, subject = line.split("\x00", 5)
            info[name] = {"commit": peeled or obj, "date": tdate or cdate, "message": subject}
        return info

    # --- download -----------------------------------------------------------------------------------------

    def download(
        self,
        *,
        repo_id: str,
        repo_type: str = "model",
        revision: str | None = None,
        local_dir: str | Path | None = None,
        paths: Sequence[str] | None = None,
    ) -> Path:
        with self._reader(repo_type, repo_id) as gd:
            sha = self._resolve(gd, revision, repo_type, repo_id)
            entries = self._tree(gd, sha, repo_type, repo_id)
            if paths is not None:  # a few files (e.g. checking an upload): never a cached snapshot
                wanted = set(paths)
                entries = [e for e in entries if e[2] in wanted]
                if local_dir is None:
                    local_dir = tempfile.mkdtemp(prefix="openllm-download-")
            if local_dir is None:
                target = cache_root() / "snapshots" / f"{repo_type}s" / repo_id / sha
                if _snapshot_ok(target, entries):
                    return target
                target.parent.mkdir(parents=True, exist_ok=True)
                # a download killed half-way leaves its folder: the next download of this commit removes it
                with scratch_dir(f".{sha[:12]}.", target.parent) as tmp:
                    self._write_blobs(gd, entries, tmp, repo_type, repo_id)
                    if _snapshot_ok(target, entries):  # another process finished first: keep theirs
                        return target
                    if target.exists():  # a damaged copy (a file was deleted): replace it
                        shutil.rmtree(target, ignore_errors=True)
                    release(tmp)
                    try:
                        os.rename(tmp, target)
                    except OSError:
                        if not _snapshot_ok(target, entries):
                            raise
                return target
            target = Path(local_dir).expanduser()
            target.mkdir(parents=True, exist_ok=True)
            self._write_blobs(gd, entries, target, repo_type, repo_id)
            return target

    def _write_blobs(
        self, gd: str, entries: list[tuple[str, str, str]], dest: Path, repo_type: str, repo_id: str
    ) -> None:
        """Stream each blob out of git (raw bytes: no filters, no line-ending changes), checking its git
        checksum (sha1 of header + content) against the tree's id; write via a temporary name."""
        if not entries:
            return
        argv, kwargs = die_with_parent(["git", f"--git-dir={gd}", "cat-file", "--batch"])
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), **kwargs
        )
        try:
            assert proc.stdin and proc.stdout
            for mode, oid, path in entries:
                validate_path_in_repo(path)  # a hostile tree must not write outside dest
                proc.stdin.write(oid.encode() + b"\n")
                proc.stdin.flush()
                header = proc.stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise HubError(f"{repo_type} repo {repo_id}: object {oid} of {path} is missing or damaged")
                size = int(header[2])
                out = dest / path
                out.parent.mkdir(parents=True, exist_ok=True)
                part = out.with_name(out.name + ".openllm-part")
                h = hashlib.sha1(b"blob %d\x00" % size)
                left = size
                with open(part, "wb") as f:
                    while left:
                        chunk = proc.stdout.read(min(left, 1 << 20))
                        if not chunk:
                            raise HubError(f"{repo_type} repo {repo_id}: {path} was cut short")
                        h.update(chunk)
                        f.write(chunk)
                        left -= len(chunk)
                proc.stdout.read(1)  # the newline after each object
                if h.hexdigest() != oid:
                    part.unlink(missing_ok=True)
                    raise HubError(
                        f"{repo_type} repo {repo_id}: checksum mismatch for {path} "
                        f"(expected {oid}, got {h.hexdigest()}); the repository is damaged"
                    )
                if mode == "100755":
                    os.chmod(part, 0o755)
                os.replace(part, out)
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)

    # --- writes -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _workspace(self, loc: str, repo_type: str, repo_id: str) -> Iterator[str]:
        """An empty temporary bare repository. For a folder hub it borrows the hub repo's objects
        (alternates), so fetching from it copies nothing."""
        # a workspace holds a copy of everything uploaded: one left by a killed process goes at the next start
        with scratch_dir("openllm-hub-") as scratch:
            ws = os.path.join(scratch, "ws.git")
            self._git(["init", "--bare", "--quiet", ws], repo_type=repo_type, repo_id=repo_id)
            # weights are big and incompressible: no delta search and light zlib keep uploads I/O-bound
            for key, value in _FAST_PACK:
                self._git(["config", key, value], git_dir=ws, repo_type=repo_type, repo_id=repo_id)
            if self.root is not None:
                with open(os.path.join(ws, "objects", "info", "alternates"), "w") as f:
                    f.write(os.path.join(os.path.abspath(loc), "objects") + "\n")
            yield ws

    def _fetch_head(self, ws: str, loc: str, repo_type: str, repo_id: str, *, full: bool = False) -> str | None:
        """Fetch main (and, with ``full``, all branches and tags) into the workspace; return main's id."""
        refspecs = [f"+refs/heads/{BRANCH}:refs/remotes/origin/{BRANCH}"]
        args = ["fetch", "--quiet", "--no-tags"]
        if full:
            refspecs += ["+refs/tags/*:refs/tags/*"]
        elif self.url is not None:
            args.append("--depth=1")  # writes need the head's tree, not the history
        proc = self._git(
            args + [loc] + refspecs, git_dir=ws, repo_type=repo_type, repo_id=repo_id, network=True, check=False
        )
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            if "couldn't find remote ref" in stderr:  # an empty repository: no main yet
                return None
            typed = classify_git_error(stderr, where=self._where(repo_type, repo_id))
            raise typed or GitFailed(f"git fetch failed: {stderr.strip()}", stderr)
        return (
            self._git(["rev-parse", f"refs/remotes/origin/{BRANCH}"], git_dir=ws, repo_type=repo_type, repo_id=repo_id)
            .stdout.decode()
            .strip()
        )

    def _push(
        self, ws: str, loc: str, refspecs: Sequence[str], repo_type: str, repo_id: str, options: Sequence[str] = ()
    ) -> tuple[bool, str]:
        """Push ``refspecs`` as one atomic update (all land or none does). (True, "") when the push landed;
        (False, stderr) when it was rejected as a race or a conflict."""
        atomic = ["--atomic"] if len(refspecs) > 1 else []
        proc = self._git(
            ["push", "--quiet", "--porcelain", *atomic, *options, loc, *refspecs],
            git_dir=ws,
            repo_type=repo_type,
            repo_id=repo_id,
            network=True,
            check=False,
        )
        if proc.returncode == 0:
            return True, ""
        text = proc.stderr.decode("utf-8", "replace") + proc.stdout.decode("utf-8", "replace")
        if is_push_race(text) or "already exists" in text:
            return False, text
        typed = classify_git_error(text, where=self._where(repo_type, repo_id))
        raise typed or GitFailed(f"git push to {self._where(repo_type, repo_id)} failed: {text.strip()}", text)

    def _remote_tag(self, loc: str, tag: str, repo_type: str, repo_id: str) -> str | None:
        """The id of the tag object (or commit) ``refs/tags/TAG`` names on the hub now; None when absent."""
        out = self._git(
            ["ls-remote", loc, f"refs/tags/{tag}"], repo_type=repo_type, repo_id=repo_id, network=True
        ).stdout.decode()
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == f"refs/tags/{tag}":
                return sha
        return None

    def _commit_loop(
        self,
        *,
        repo_type: str,
        repo_id: str,
        message: str,
        parent_commit: str | None,
        build: Callable[[str, str | None], str],
        full_fetch: bool = False,
        tag: _TagSpec | None = None,
    ) -> str:
        """fetch -> build tree -> commit -> push, again on the new head while the push loses races. With
        ``tag``, the branch and the tag go in one atomic push: both land or neither does."""
        validate_repo_id(repo_id)
        loc = self._require(repo_type, repo_id)
        if parent_commit is not None:
            validate_revision(parent_commit)
        kw: dict[str, Any] = dict(repo_type=repo_type, repo_id=repo_id)
        with self._workspace(loc, repo_type, repo_id) as ws:
            for attempt in range(self.max_attempts):
                head = self._fetch_head(ws, loc, repo_type, repo_id, full=full_fetch)
                if parent_commit is not None and not (head or "").startswith(parent_commit):
                    raise ConflictError(
                        f"{repo_type} repo {repo_id} moved: its head is {(head or 'empty')[:12]}, "
                        f"not the parent commit {parent_commit[:12]} you built on; fetch and retry",
                        repo_id=repo_id,
                        repo_type=repo_type,
                    )
                old_tag = None
                if tag is not None:
                    old_tag = self._remote_tag(loc, tag.name, repo_type, repo_id)
                    if old_tag is not None and not tag.replace:
                        meanwhile = " (created meanwhile)" if attempt else ""
                        raise RevisionExists(
                            f"{repo_type} repo {repo_id} already has version {tag.name!r}"
                            f"{meanwhile}; versions are immutable",
                            repo_id=repo_id,
                            repo_type=repo_type,
                        )
                tree = build(ws, head)
                if head is not None and tree == self._tree_of(ws, head, repo_type, repo_id):
                    new = head  # nothing changed: no empty commit (as the Hugging Face hub does)
                else:
                    args = ["commit-tree", "--no-gpg-sign", tree, "-m", message]
                    if head is not None:
                        args[2:2] = ["-p", head]
                    new = self._git(args, git_dir=ws, input=b"", **kw).stdout.decode().strip()
                refspecs = [f"{new}:refs/heads/{BRANCH}"] if new != head else []
                options: list[str] = []
                if tag is not None:
                    self._git(
                        ["-c", "tag.gpgSign=false", "tag", "--force", "-a", "-m", tag.message, tag.name, new],
                        git_dir=ws,
                        **kw,
                    )
                    if old_tag is None:  # no '+': refused if the tag appeared meanwhile
                        refspecs.append(f"refs/tags/{tag.name}:refs/tags/{tag.name}")
                    else:  # replace exactly the tag we saw, not one someone else moved meanwhile
                        refspecs.append(f"+refs/tags/{tag.name}:refs/tags/{tag.name}")
                        options.append(f"--force-with-lease=refs/tags/{tag.name}:{old_tag}")
                if not refspecs:
                    return new
                ok, why = self._push(ws, loc, refspecs, repo_type, repo_id, options)
                if ok:
                    return new
                if parent_commit is not None:
                    raise ConflictError(
                        f"{repo_type} repo {repo_id} moved while pushing; its head is no longer {parent_commit[:12]}",
                        repo_id=repo_id,
                        repo_type=repo_type,
                    )
                time.sleep(random.uniform(0.01, 0.05) * min(attempt + 1, 10))
        raise ConflictError(
            f"{repo_type} repo {repo_id}: gave up after {self.max_attempts} attempts, other "
            f"writers kept moving the branch; try again",
            repo_id=repo_id,
            repo_type=repo_type,
        )

    def _tree_of(self, ws: str, sha: str, repo_type: str, repo_id: str) -> str:
        return (
            self._git(["rev-parse", f"{sha}^{{tree}}"], git_dir=ws, repo_type=repo_type, repo_id=repo_id)
            .stdout.decode()
            .strip()
        )

    def _build_tree(
        self,
        ws: str,
        head: str | None,
        adds: list[tuple[str, str, str]],
        deletes: list[CommitOperationDelete],
        delete_patterns: Sequence[str],
        repo_type: str,
        repo_id: str,
    ) -> str:
        """The tree of ``head`` with the files deleted and added (blob ids already in ``ws``)."""
        index = os.path.join(ws, f"index-{uuid.uuid4().hex[:8]}")
        kw: dict[str, Any] = dict(git_dir=ws, repo_type=repo_type, repo_id=repo_id, env={"GIT_INDEX_FILE": index})
        try:
            self._git(["read-tree", head] if head else ["read-tree", "--empty"], **kw)
            existing = self._git(["ls-files", "-z"], **kw).stdout.decode("utf-8", "surrogateescape").split("\x00")
            existing = [p for p in existing if p]
            added = {p for _, _, p in adds}
            remove: set[str] = set()
            for op in deletes:
                if op.is_folder:
                    hits = [p for p in existing if p.startswith(op.path_in_repo)]
                else:
                    hits = [p for p in existing if p == op.path_in_repo]
                if not hits:
                    raise EntryNotFound(
                        f"cannot delete {op.path_in_repo!r}: not in {repo_type} repo {repo_id}",
                        repo_id=repo_id,
                        repo_type=repo_type,
                    )
                remove.update(hits)
            for pattern in delete_patterns:
                pat = pattern + "*" if pattern.endswith("/") else pattern
                remove.update(p for p in existing if fnmatch.fnmatch(p, pat))
            remove -= added
            lines = [f"0 {_ZERO}\t{p}" for p in sorted(remove)]
            lines += [f"{mode} {oid}\t{p}" for mode, oid, p in adds]
            if lines:
                data = "\x00".join(lines).encode("utf-8", "surrogateescape") + b"\x00"
                # a file replacing a folder (or the reverse) needs the old entries gone first
                self._git(["update-index", "--add", "--replace", "-z", "--index-info"], input=data, **kw)
            return self._git(["write-tree"], **kw).stdout.decode().strip()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(index)

    def _hash_adds(
        self, ws: str, adds: list[CommitOperationAdd], repo_type: str, repo_id: str
    ) -> list[tuple[str, str, str]]:
        """Write each added file into the workspace's object store: (mode, blob id, path in repo)."""
        kw: dict[str, Any] = dict(git_dir=ws, repo_type=repo_type, repo_id=repo_id)
        files = [(op, Path(op.path_or_fileobj)) for op in adds if not isinstance(op.path_or_fileobj, bytes)]
        out: dict[str, tuple[str, str, str]] = {}
        if files:
            for _, p in files:
                if not p.is_file():
                    raise InputNotFound(f"cannot upload {p}: no such file", path=p)
            paths = "".join(f"{os.path.abspath(p)}\n" for _, p in files).encode("utf-8", "surrogateescape")
            oids = (
                self._git(["hash-object", "-w", "--no-filters", "--stdin-paths"], input=paths, **kw)
                .stdout.decode()
                .split()
            )
            for (op, p), oid in zip(files, oids):
                mode = "100755" if os.access(p, os.X_OK) else "100644"
                out[op.path_in_repo] = (mode, oid, op.path_in_repo)
        for op in adds:
            if isinstance(op.path_or_fileobj, bytes):
                oid = (
                    self._git(["hash-object", "-w", "--no-filters", "--stdin"], input=op.path_or_fileobj, **kw)
                    .stdout.decode()
                    .strip()
                )
                out[op.path_in_repo] = ("100644", oid, op.path_in_repo)
        # the last operation on a path wins, as in huggingface_hub
        order = {op.path_in_repo: i for i, op in enumerate(adds)}
        return sorted(out.values(), key=lambda e: order[e[2]])

    def create_commit(
        self,
        *,
        repo_id: str,
        operations: Iterable[CommitOperation],
        commit_message: str,
        repo_type: str = "model",
        parent_commit: str | None = None,
        _delete_patterns: Sequence[str] = (),
        _tag: _TagSpec | None = None,
    ) -> str:
        validate_repo_id(repo_id)
        validate_repo_type(repo_type)
        ops = list(operations)
        for op in ops:
            if not isinstance(op, (CommitOperationAdd, CommitOperationDelete)):
                raise TypeError(f"unknown commit operation {op!r}")
        adds = [op for op in ops if isinstance(op, CommitOperationAdd)]
        deletes = [op for op in ops if isinstance(op, CommitOperationDelete)]
        if not commit_message or not commit_message.strip():
            raise HubError("a commit needs a message (commit_message=...)")
        hashed: dict[str, list] = {}

        def build(ws: str, head: str | None) -> str:
            if "adds" not in hashed:  # hash once, reuse on retries
                hashed["adds"] = self._hash_adds(ws, adds, repo_type, repo_id)
            return self._build_tree(ws, head, hashed["adds"], deletes, _delete_patterns, repo_type, repo_id)

        return self._commit_loop(
            repo_type=repo_type,
            repo_id=repo_id,
            message=commit_message,
            parent_commit=parent_commit,
            build=build,
            tag=_tag,
        )

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        repo_type: str = "model",
        commit_message: str | None = None,
        delete_patterns: str | Sequence[str] | None = None,
        parent_commit: str | None = None,
    ) -> str:
        return self._upload(
            repo_id=repo_id,
            folder_path=folder_path,
            repo_type=repo_type,
            commit_message=commit_message,
            delete_patterns=delete_patterns,
            parent_commit=parent_commit,
        )

    def upload_version(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        tag: str,
        repo_type: str = "model",
        commit_message: str | None = None,
        tag_message: str | None = None,
        delete_patterns: str | Sequence[str] | None = None,
        replace_tag: bool = False,
    ) -> str:
        """:meth:`Hub.upload_version` as ONE ``git push --atomic`` of main and the tag: a version that is
        refused (the tag exists, or another writer took it meanwhile) or interrupted leaves main and every tag
        exactly as they were. ``replace_tag`` moves only the tag it saw (a lease), never one moved meanwhile."""
        validate_tag(tag)
        spec = _TagSpec(name=tag, message=tag_message or f"version {tag}", replace=replace_tag)
        return self._upload(
            repo_id=repo_id,
            folder_path=folder_path,
            repo_type=repo_type,
            commit_message=commit_message,
            delete_patterns=delete_patterns,
            tag=spec,
        )

    def _upload(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        repo_type: str,
        commit_message: str | None,
        delete_patterns: str | Sequence[str] | None,
        parent_commit: str | None = None,
        tag: _TagSpec | None = None,
    ) -> str:
        folder = Path(folder_path)
        if not folder.is_dir():
            raise InputNotFound(f"cannot upload {folder}: not a folder", path=folder)
        # links inside the folder are read as their target; a link out of it refuses the whole upload
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(src)) for rel, src in folder_files(folder)]
        patterns = [delete_patterns] if isinstance(delete_patterns, str) else list(delete_patterns or [])
        return self.create_commit(
            repo_id=repo_id,
            operations=ops,
            repo_type=repo_type,
            parent_commit=parent_commit,
            commit_message=commit_message or f"Upload {folder.name or 'folder'}",
            _delete_patterns=patterns,
            _tag=tag,
        )

    def revert(
        self, *, repo_id: str, to_revision: str, repo_type: str = "model", commit_message: str | None = None
    ) -> str:
        validate_revision(to_revision)
        with self._reader(repo_type, repo_id) as gd:
            target = self._resolve(gd, to_revision, repo_type, repo_id)
        message = commit_message or f"Revert to {to_revision} ({target[:12]})"

        def build(ws: str, head: str | None) -> str:
            return self._tree_of(ws, target, repo_type, repo_id)

        return self._commit_loop(
            repo_type=repo_type, repo_id=repo_id, message=message, parent_commit=None, build=build, full_fetch=True
        )

    # --- tags ---------------------------------------------------------------------------------------------

    def create_tag(
        self,
        *,
        repo_id: str,
        tag: str,
        revision: str | None = None,
        message: str | None = None,
        repo_type: str = "model",
        exist_ok: bool = False,
    ) -> None:
        validate_tag(tag)
        loc = self._require(repo_type, repo_id)
        kw: dict[str, Any] = dict(repo_type=repo_type, repo_id=repo_id)
        with self._workspace(loc, repo_type, repo_id) as ws:
            self._fetch_head(ws, loc, repo_type, repo_id, full=True)
            if revision is None:
                sha = (
                    self._git(["rev-parse", f"refs/remotes/origin/{BRANCH}"], git_dir=ws, **kw).stdout.decode().strip()
                )
            else:
                sha = self._resolve(ws, revision, repo_type, repo_id)
            existing = self._git(
                ["rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}"], git_dir=ws, check=False, **kw
            )
            if existing.returncode == 0:
                # the same tag on the same commit: a retried call whose first answer was lost; nothing to do
                if exist_ok or existing.stdout.decode().strip() == sha:
                    return
                raise RevisionExists(
                    f"{repo_type} repo {repo_id} already has version {tag!r}; versions are immutable",
                    repo_id=repo_id,
                    repo_type=repo_type,
                )
            self._git(
                ["-c", "tag.gpgSign=false", "tag", "-a", "-m", message or f"version {tag}", tag, sha], git_dir=ws, **kw
            )
            ok, why = self._push(ws, loc, [f"refs/tags/{tag}:refs/tags/{tag}"], repo_type, repo_id)
            if not ok and not exist_ok:
                raise RevisionExists(
                    f"{repo_type} repo {repo_id} already has version {tag!r} (created meanwhile); "
                    f"versions are immutable",
                    repo_id=repo_id,
                    repo_type=repo_type,
                )

    def delete_tag(self, *, repo_id: str, tag: str, repo_type: str = "model") -> None:
        validate_tag(tag)
        loc = self._require(repo_type, repo_id)
        if tag not in self.list_refs(repo_id=repo_id, repo_type=repo_type).tags:
            raise RevisionNotFound(
                f"{repo_type} repo {repo_id} has no version {tag!r}", repo_id=repo_id, repo_type=repo_type
            )
        # git push needs a repository to run in: an empty workspace, never the current directory's
        with self._workspace(loc, repo_type, repo_id) as ws:
            proc = self._git(
                ["push", "--quiet", loc, f":refs/tags/{tag}"],
                git_dir=ws,
                repo_type=repo_type,
                repo_id=repo_id,
                network=True,
                check=False,
            )
        if proc.returncode != 0:
            text = proc.stderr.decode("utf-8", "replace")
            if "remote ref does not exist" in text:
                raise RevisionNotFound(
                    f"{repo_type} repo {repo_id} has no version {tag!r}", repo_id=repo_id, repo_type=repo_type
                )
            typed = classify_git_error(text, where=self._where(repo_type, repo_id))
            raise typed or GitFailed(f"could not delete tag {tag}: {text.strip()}", text)


@dataclass(frozen=True)
class _TagSpec:
    """The tag a commit loop pushes together with the branch."""

    name: str
    message: str
    replace: bool = False


def _env() -> dict[str, str]:
    from .gitcmd import git_env

    return git_env()


def _snapshot_ok(target: Path, entries: list[tuple[str, str, str]]) -> bool:
    """A cached snapshot is complete: it was renamed into place only after every checksum matched, so it is
    enough that every file is still there (a missing one means download again)."""
    if not target.is_dir():
        return False
    for _, _oid, path in entries:
        if not (target / path).is_file():
            return False
    return True
