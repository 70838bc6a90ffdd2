"""Dependency resolution for the Space, by reading source with ``ast`` (nothing is imported).

- ``import_closure``: the project modules that ``app.py`` needs, transitively. A needed project module that
  the Space does not hold fails with the importer's name (``MissingModule``).
- ``third_party``: the non-stdlib, non-project top-level imports of a set of files.
- ``requirements``: those imports mapped to distributions, with the version ranges pyproject.toml allows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import OpenLLMError

__all__ = [
    "Import",
    "MissingModule",
    "module_name",
    "parse_imports",
    "ModuleIndex",
    "import_closure",
    "third_party",
    "distribution_for",
    "requirements",
    "parse_requirement",
    "IMPORT_TO_DIST",
    "pin",
    "is_cpu_hardware",
    "CPU_TORCH_INDEX",
]

# import name -> distribution where they differ (checked before the environment's metadata)
IMPORT_TO_DIST: dict[str, str] = {
    "yaml": "pyyaml",
    "google.protobuf": "protobuf",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "bs4": "beautifulsoup4",
    "sentencepiece": "sentencepiece",
    "huggingface_hub": "huggingface-hub",
    "multipart": "python-multipart",
    "dotenv": "python-dotenv",
    "jwt": "pyjwt",
    "OpenSSL": "pyopenssl",
    "serial": "pyserial",
    "tensorboard": "tensorboard",
    "torch.utils.tensorboard": "tensorboard",  # torch's writer is a shim: the package is tensorboard
    "torch": "torch",
    "pkg_resources": "setuptools",
}
_STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"__future__", "__main__"}
# try statements: ``try`` and, from Python 3.11, ``try`` with ``except*``
_TRY_NODES = (ast.Try, getattr(ast, "TryStar", ast.Try))


class MissingModule(OpenLLMError):
    """A module the Space needs is not part of it."""


@dataclass(frozen=True)
class Import:
    """One imported module, resolved to an absolute dotted name."""

    module: str  # absolute dotted name ("" never: relative ones are resolved)
    names: tuple[str, ...]  # for ``from X import a, b``: the names (maybe submodules); () for ``import X``
    lineno: int
    guarded: bool  # inside ``try: ... except ImportError`` (an optional import)


def module_name(space_path: str) -> str | None:
    """``training/model.py`` -> ``training.model``; ``training/__init__.py`` -> ``training``; non-.py -> None."""
    p = PurePosixPath(space_path)
    if p.suffix != ".py":
        return None
    parts = list(p.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(x.isidentifier() for x in parts):
        return None
    return ".".join(parts)


def _guards_import(handler: ast.ExceptHandler) -> bool:
    t = handler.type
    names = [t] if not isinstance(t, ast.Tuple) else list(t.elts)
    if t is None:
        return True
    return any(
        isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
        for n in names
    )


def _required_module(call: ast.expr) -> str | None:
    """The module of a ``require("module", ...)`` call (a literal name), else None."""
    if not isinstance(call, ast.Call) or not call.args:
        return None
    fn = call.func
    name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
    first = call.args[0]
    if name == "require" and isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value:
        return first.value
    return None


def parse_imports(source: str, modname: str, is_package: bool, filename: str = "<src>") -> list[Import]:
    """Every import in ``source`` (module level or inside functions), relative ones made absolute."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise OpenLLMError(f"{filename}:{exc.lineno}: syntax error: {exc.msg}") from exc
    package = modname if is_package else modname.rpartition(".")[0]
    out: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        # imports are statements: walk statement lists only (bodies of defs, classes, ifs, loops, withs,
        # tries, matches), never into expressions, which is most of a module's nodes
        if isinstance(node, _TRY_NODES):
            g = guarded or any(_guards_import(h) for h in node.handlers)
            for child in node.body:
                visit(child, g)
            for h in node.handlers:  # ``except ImportError: import fallback`` is optional too
                for child in h.body:
                    visit(child, guarded or _guards_import(h))
            for child in [*node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        if isinstance(node, ast.Expr) and (lazy := _required_module(node.value)):
            # ``require("onnx", ...)`` (openllm.errors.require) stands before a lazy import, or before a call
            # into a library that imports the module itself (torch.onnx imports onnx): it counts as an import
            out.append(Import(lazy, (), node.lineno, guarded))
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append(Import(a.name, (), node.lineno, guarded))
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                up = node.level - 1
                if up >= len(base_parts):
                    raise MissingModule(
                        f"{filename}:{node.lineno}: relative import beyond the top-level package "
                        f"({'.' * node.level}{node.module or ''})"
                    )
                base = ".".join(base_parts[: len(base_parts) - up])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append(Import(mod, tuple(a.name for a in node.names), node.lineno, guarded))
            return
        for name in ("body", "orelse", "finalbody"):
            for child in getattr(node, name, None) or ():
                if isinstance(child, ast.stmt):
                    visit(child, guarded)
        for case in getattr(node, "cases", None) or ():  # match statements
            for child in case.body:
                visit(child, guarded)

    for stmt in tree.body:
        visit(stmt, False)
    return out


class ModuleIndex:
    """The Space's Python modules: dotted name -> Space path, and their parsed imports."""

    def __init__(self, sources: Mapping[str, str], cache: dict | None = None):
        """``sources``: Space path -> file text, for every .py file of the Space (synced or generated).
        ``cache``: a dict of earlier parses (content hash + module -> imports), read and filled in."""
        self.cache = cache if cache is not None else {}
        self.used: dict[str, list] = {}
        self.paths: dict[str, str] = {}
        self.packages: set[str] = set()
        self._text = dict(sources)
        for path in sources:
            name = module_name(path)
            if name is None:
                continue
            self.paths[name] = path
            if PurePosixPath(path).name == "__init__.py":
                self.packages.add(name)
        self._imports: dict[str, list[Import]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    @property
    def top_names(self) -> set[str]:
        return {n.split(".")[0] for n in self.paths}

    def imports(self, name: str) -> list[Import]:
        if name not in self._imports:
            path = self.paths[name]
            text = self._text[path]
            key = (
                f"{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()}|{name}|{name in self.packages}"
            )
            hit = self.cache.get(key)
            if hit is None:  # parsing is the slow part of a build: unchanged files are parsed once
                hit = [
                    [i.module, list(i.names), i.lineno, i.guarded]
                    for i in parse_imports(text, name, name in self.packages, path)
                ]
            self.used[key] = hit
            self._imports[name] = [Import(m, tuple(n), ln, g) for m, n, ln, g in hit]
        return self._imports[name]


def import_closure(
    index: ModuleIndex, entry: str, project_names: Iterable[str] = (), renamed: Mapping[str, str] | None = None
) -> list[str]:
    """The modules of the Space that running ``entry`` imports, sorted; raises ``MissingModule`` naming the
    importer when one of them is not in the Space.

    ``project_names``: top-level names that belong to the project although the Space may not hold them (e.g.
    the main repository's package name): importing one that the Space lacks is an error, not a third-party
    import. ``renamed``: {main name: Space name}, for a clearer message (``openllm`` is ``training`` there).
    """
    project = set(project_names) | index.top_names
    renamed = dict(renamed or {})
    seen: set[str] = set()
    todo = [entry]

    def need(mod: str, importer: str, lineno: int, guarded: bool) -> None:
        parts = mod.split(".")
        if parts[0] not in project:
            return
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            sub = ".".join(parts[:i])
            if sub in index:
                if sub not in seen:
                    todo.append(sub)
                continue
            if guarded:
                return
            where = f"{index.paths[importer]}:{lineno}"
            hint = ""
            if parts[0] in renamed:
                hint = f" (the package is {renamed[parts[0]]!r} in the Space: import it relatively)"
            raise MissingModule(
                f"{where} imports {mod}, which is not in the Space: it is outside the synced files of space.toml{hint}"
            )

    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent and parent in index and parent not in seen:
            todo.append(parent)
        for imp in index.imports(name):
            need(imp.module, name, imp.lineno, imp.guarded)
            for n in imp.names:  # ``from pkg import sub`` may name a submodule
                if n != "*" and f"{imp.module}.{n}" in index and f"{imp.module}.{n}" not in seen:
                    todo.append(f"{imp.module}.{n}")
    return sorted(seen)


def third_party(
    index: ModuleIndex, names: Iterable[str], project_names: Iterable[str] = ()
) -> dict[str, list[tuple[str, int, bool]]]:
    """``{imported module: [(Space path, line, guarded), ...]}`` for non-stdlib, non-project imports."""
    project = set(project_names) | index.top_names
    out: dict[str, list[tuple[str, int, bool]]] = {}
    for name in names:
        for imp in index.imports(name):
            top = imp.module.split(".")[0]
            if not top or top in project or top in _STDLIB:
                continue
            out.setdefault(imp.module, []).append((index.paths[name], imp.lineno, imp.guarded))
    return out


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def parse_requirement(req: str) -> tuple[str, str]:
    """``"torch>=2.4,<2.14"`` -> (``"torch"``, ``">=2.4,<2.14"``); extras are kept with the name."""
    m = _REQ.match(req)
    if not m:
        raise OpenLLMError(f"pyproject.toml: cannot read the requirement {req!r}")
    return m.group(1) + (m.group(2) or ""), m.group(3)


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    """importlib.metadata's map of top-level names to distributions (slow: read once)."""
    try:
        from importlib.metadata import packages_distributions

        return dict(packages_distributions())
    except Exception:  # pragma: no cover - broken metadata in the environment
        return {}


def distribution_for(module: str, declared: Iterable[str] = (), *, search: bool = True) -> str:
    """The distribution that provides an import (``yaml`` -> ``pyyaml``), as a normalised name."""
    declared_norm = {_norm(parse_requirement(d)[0].split("[")[0]) for d in declared}
    parts = module.split(".")
    for i in range(len(parts), 0, -1):  # the most specific override first: google.protobuf before google
        key = ".".join(parts[:i])
        if key in IMPORT_TO_DIST:
            return _norm(IMPORT_TO_DIST[key])
    if _norm(parts[0]) in declared_norm:  # the usual case: the import is named like its distribution
        return _norm(parts[0])
    if _installed(parts[0]):  # a distribution named like the import is installed
        return _norm(parts[0])
    dists = _packages_distributions().get(parts[0], []) if search else []
    dists = sorted({_norm(d) for d in dists})
    if len(dists) == 1:
        return dists[0]
    for d in dists:  # a namespace shared by several distributions: the one the project declares
        if d in declared_norm:
            return d
    return _norm(parts[0])


def requirements(
    imports: Mapping[str, list[tuple[str, int, bool]]], pyproject: Mapping, data_packages: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Requirement lines for ``imports`` (from ``third_party``) and the ``data_packages`` the code reads without
    importing them, with pyproject's specifiers.

    Returns (lines, notes). An unguarded import that pyproject does not declare raises ``MissingModule``
    naming the importer; a guarded (optional) one is left out with a note.
    """
    project = pyproject.get("project", {})
    declared: dict[str, str] = {}
    for req in project.get("dependencies", []):
        name, spec = parse_requirement(req)
        declared.setdefault(_norm(name.split("[")[0]), f"{name}{spec}")
    for _extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        for req in reqs:
            name, spec = parse_requirement(req)
            declared.setdefault(_norm(name.split("[")[0]), f"{name}{spec}")
    lines: dict[str, str] = {}
    notes: list[str] = []
    all_declared = list(project.get("dependencies", []))
    for module, sites in sorted(imports.items()):
        optional = all(s[2] for s in sites)  # an optional import needs no search of every installed package
        dist = distribution_for(module, all_declared, search=not optional)
        if dist in declared:
            lines[dist] = declared[dist]
            continue
        hard = [s for s in sites if not s[2]]
        if not hard:
            notes.append(f"optional import {module} ({sites[0][0]}) left out of requirements.txt")
            continue
        path, line, _ = hard[0]
        if not _installed(dist):
            raise MissingModule(
                f"{path}:{line} imports {module} (distribution {dist!r}), which pyproject.toml "
                "does not declare and is not installed: add it to [project] dependencies"
            )
        # installed as some declared package's dependency: listed, without a range, and said
        lines.setdefault(dist, dist)
        notes.append(
            f"{path}:{line} imports {module}, which pyproject.toml does not declare: listed as "
            f"{dist!r} without a version range; declare it in [project] dependencies"
        )
    for dist in data_packages:
        key = _norm(dist)
        if key not in declared:
            raise MissingModule(
                f"space.toml's [requirements] data_packages names {dist!r}, which pyproject.toml "
                f"does not declare: add it to [project] dependencies"
            )
        lines[key] = declared[key]
    return [lines[k] for k in sorted(lines)], notes


# PyTorch's index of CPU-only wheels: a CPU Space installs torch from it (PyPI's torch carries CUDA, ~2 GB more)
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def is_cpu_hardware(hardware: str) -> bool:
    """Whether a Space hardware name (``cpu-basic``, ``zero-a10g``, ``t4-small``, ...) has no GPU."""
    return hardware.strip().lower().startswith("cpu")


def pin(lines: Iterable[str], hardware: str = "cpu-basic") -> list[str]:
    """Requirement lines pinned to the versions installed here (what the tests ran with); one not installed
    keeps its range. torch: on CPU hardware the CPU build (``torch==X+cpu``, from PyTorch's CPU index, whose
    ``--extra-index-url`` line comes first), elsewhere the plain release (PyPI's CUDA build)."""
    from importlib.metadata import PackageNotFoundError, version

    out: list[str] = []
    cpu = is_cpu_hardware(hardware)
    torch = False
    for line in lines:
        name, _spec = parse_requirement(line)
        base = name.split("[")[0]
        try:
            v = version(base)
        except PackageNotFoundError:
            out.append(line)
            continue
        if _norm(base) == "torch":
            torch = True
            release = v.split("+")[0]
            v = f"{release}+cpu" if cpu else release
        out.append(f"{name}=={v}")
    if cpu and torch:
        out.insert(0, f"--extra-index-url {CPU_TORCH_INDEX}")
    return out


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def read_pyproject(root: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]
    path = root / "pyproject.toml"
    if not path.is_file():
        raise OpenLLMError(f"no pyproject.toml in {root}: the build takes the dependency ranges from it")
    return tomllib.loads(path.read_text(encoding="utf-8"))
