"""The sync manifest (``space.toml``): which files of the main repository go where in the Space.

``load_manifest(root)`` reads and validates it; ``Manifest.plan()`` walks the repository once and returns
``{space_path: source_path}`` for every synced file, never-synced paths and junk left out.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import OpenLLMError

__all__ = ["Manifest", "Rule", "ManifestError", "load_manifest", "find_root", "MANIFEST_NAME", "glob_regex"]

MANIFEST_NAME = "space.toml"
# what a generated file may be made from, besides a path in the repository (copied as is)
GENERATORS = {"app", "readme", "requirements", "gitignore"}
HF_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
# folders never worth walking into
_PRUNE = {".git", ".venv", "venv", "node_modules", ".pytest_cache", "__pycache__", ".mypy_cache", ".tox"}


class ManifestError(OpenLLMError):
    """space.toml is missing or wrong."""


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay inside one path component; ``**`` spans any number of them (also none)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : j + 1])[4:-3])  # fnmatch's class, minus (?s:...)\Z
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def _fixed_prefix(pattern: str) -> str:
    """The leading folders of a glob without wildcards: ``src/openllm/**`` -> ``src/openllm/``."""
    parts = pattern.split("/")
    fixed = []
    for p in parts[:-1]:
        if any(ch in p for ch in "*?["):
            break
        fixed.append(p)
    return "/".join(fixed) + "/" if fixed else ""


@dataclass(frozen=True)
class Rule:
    """One ``[[sync]]`` entry: files matching ``source`` go to ``target``."""

    source: str
    target: str
    optional: bool = False

    @property
    def is_literal(self) -> bool:
        return not any(ch in self.source for ch in "*?[")

    def matches(self, rel: str) -> bool:
        return glob_regex(self.source).match(rel) is not None

    def destination(self, rel: str) -> str:
        if not self.target.endswith("/"):
            return self.target
        if self.is_literal:
            return self.target + PurePosixPath(rel).name
        return self.target + rel[len(_fixed_prefix(self.source)) :]


@dataclass
class Manifest:
    """The parsed manifest, bound to the repository root it was found in."""

    root: Path
    rules: list[Rule]
    never: list[str]
    ignore: list[str]
    generated: dict[str, str]
    space_id: str = ""
    package: str = "src/openllm"
    package_name: str = "training"
    readme: dict[str, Any] = field(default_factory=dict)
    app_module: str = "training.app"
    # distributions the package reads as data (importlib.metadata), which no import statement names
    data_packages: list[str] = field(default_factory=list)

    # ---- what is synced
    def is_never(self, rel: str) -> bool:
        for p in self.never:
            p = p.rstrip("/")
            if rel == p or rel.startswith(p + "/"):
                return True
        return any(glob_regex(g).match(rel) for g in self.ignore)

    def walk(self) -> list[str]:
        """Every file under the root (posix, relative), minus pruned folders and never-synced paths."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            reldir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            reldir = "" if reldir == "." else reldir + "/"
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE and not self.is_never(reldir + d))
            for f in sorted(filenames):
                rel = reldir + f
                if not self.is_never(rel) and not os.path.islink(os.path.join(dirpath, f)):
                    out.append(rel)
        return out

    def plan(self) -> dict[str, str]:
        """``{space_path: source_path}`` (both relative, posix) for every synced file; the first rule wins."""
        files = self.walk()
        out: dict[str, str] = {}
        for rule in self.rules:
            rx = glob_regex(rule.source)
            hits = [rel for rel in files if rx.match(rel)]
            if not hits and not rule.optional:
                raise ManifestError(
                    f"space.toml: the rule {rule.source!r} matches no file under {self.root}; "
                    "fix the rule or mark it optional = true"
                )
            for rel in hits:
                dest = rule.destination(rel)
                if dest in self.generated:
                    raise ManifestError(
                        f"space.toml: {rel} would land on {dest}, a generated Space file; narrow the rule"
                    )
                out.setdefault(dest, rel)
        return dict(sorted(out.items()))

    def source_of(self, space_path: str) -> str | None:
        return self.plan().get(space_path)


def _fail(msg: str) -> None:
    raise ManifestError(f"space.toml: {msg}")


def _check_rel(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        _fail(f"{what} {path!r} must be a relative path inside the repository")
    return path


def parse_manifest(data: dict[str, Any], root: Path) -> Manifest:
    space = data.get("space", {})
    rules = []
    for i, r in enumerate(data.get("sync", [])):
        if not isinstance(r, dict) or "source" not in r or "target" not in r:
            _fail(f"[[sync]] entry {i + 1} needs source and target")
        rules.append(
            Rule(_check_rel(r["source"], "source"), _check_rel(r["target"], "target"), bool(r.get("optional", False)))
        )
    if not rules:
        _fail("no [[sync]] rules")
    never = data.get("never", {})
    generated = data.get("generated", {})
    for path, how in generated.items():
        _check_rel(path, "generated file")
        if how not in GENERATORS:
            _check_rel(how, f"source of generated file {path}")
    readme = dict(data.get("readme", {}))
    for key in ("colorFrom", "colorTo"):
        if key in readme and readme[key] not in HF_COLORS:
            _fail(f"[readme] {key} = {readme[key]!r} is not one of {sorted(HF_COLORS)}")
    m = Manifest(
        root=root,
        rules=rules,
        never=list(never.get("paths", [])),
        ignore=list(never.get("ignore", [])),
        generated=dict(generated),
        space_id=space.get("id", ""),
        package=space.get("package", "src/openllm"),
        package_name=space.get("package_name", "training"),
        readme=readme,
        app_module=data.get("app", {}).get("module", "training.app"),
        data_packages=list(data.get("requirements", {}).get("data_packages", [])),
    )
    for rule in rules:  # a rule that could only match never-synced files is a mistake worth saying
        if rule.is_literal and m.is_never(rule.source):
            _fail(f"the rule {rule.source!r} names a never-synced path")
    return m


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The main repository: the nearest folder at or above ``start`` (default: cwd) holding space.toml,
    else the checkout this package is installed from (an editable install)."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / MANIFEST_NAME).is_file():
            return d
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / MANIFEST_NAME).is_file() and (checkout / "pyproject.toml").is_file():
        return checkout
    raise ManifestError(
        f"no {MANIFEST_NAME} found in {here} or above: run from a checkout of the main repository or pass --root"
    )


def load_manifest(root: str | os.PathLike | None = None) -> Manifest:
    """Read ``space.toml`` from ``root`` (or the repository found from the current folder)."""
    r = Path(root).resolve() if root is not None else find_root()
    path = r / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {r}: pass the main repository's root")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    return parse_manifest(data, r)
