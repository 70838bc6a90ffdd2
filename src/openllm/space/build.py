"""``openllm space build``: the Space's tree, made from the main repository by the manifest.

Steps (those of ``sync`` up to validation): copy the synced files by the manifest, resolve the
dependencies of ``app.py`` over the project's modules, generate the Space-specific files (``app.py``,
``README.md``, ``requirements.txt``, ``HELP.md``, ``.gitignore``), then check every written file's hash.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import OpenLLMError
from ..fsio import write_text_atomic
from . import templates
from .deps import ModuleIndex, import_closure, module_name, pin, read_pyproject, requirements, third_party
from .manifest import Manifest, load_manifest
from .state import sha256_bytes, sha256_file, tree_hashes

__all__ = ["BuildResult", "build", "render", "BuildError", "hardware_of", "with_hardware", "DEFAULT_HARDWARE"]

# the Space hardware a build is made for when space.toml's [readme] suggested_hardware does not say
DEFAULT_HARDWARE = "cpu-basic"
# Sign in with Hugging Face: the app publishes under the signed-in user's namespace with their own token, so it
# asks to read, write and create (manage) their repositories
OAUTH_SCOPES = ["read-repos", "write-repos", "manage-repos"]
# installing torch and the rest on a fresh Space takes longer than the default 30 minutes allow at times
STARTUP_TIMEOUT = "1h"
# the app's tab list (openllm.app.tabs.TABS), where the Space holds it
_TABS_MODULE = "app/tabs/__init__.py"

# the app module's function the Space calls, best first: a builder returns a gradio Blocks; a launcher serves
_BUILDERS = ("build_app", "create_app", "make_app", "build_demo")
_LAUNCHERS = ("launch", "serve", "main", "run")
_HOST_ARGS = ("host", "server_name")
_PORT_ARGS = ("port", "server_port")
# HF's SPDX-ish license ids for the front matter (pyproject uses SPDX expressions)
_LICENSES = {
    "gpl-3.0-or-later": "gpl-3.0",
    "gpl-3.0-only": "gpl-3.0",
    "gpl-3.0": "gpl-3.0",
    "mit": "mit",
    "apache-2.0": "apache-2.0",
    "bsd-3-clause": "bsd-3-clause",
    "lgpl-3.0-or-later": "lgpl-3.0",
    "agpl-3.0-or-later": "agpl-3.0",
}


class BuildError(OpenLLMError):
    """The Space cannot be built from this repository."""


@dataclass
class BuildResult:
    """What a build made: the Space tree as ``{path: sha256}`` and where each file came from."""

    out: Path | None
    files: dict[str, str]  # Space path -> sha256
    sources: dict[str, str]  # Space path -> repository path, or "generated"
    closure: list[str]  # modules app.py imports (transitively)
    requirements: list[str]
    notes: list[str] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict, repr=False)  # generated files' bytes

    @property
    def generated(self) -> list[str]:
        return [p for p, s in self.sources.items() if s == "generated"]


def _read(root: Path, rel: str) -> bytes:
    return (root / rel).read_bytes()


def _functions(source: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(source)
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _call_for(fn: ast.FunctionDef | ast.AsyncFunctionDef, var: str) -> tuple[str, bool]:
    """The keyword arguments to pass host/port to ``fn``; and whether it takes them at all."""
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    required = [x.arg for x in (a.posonlyargs + a.args)[: len(a.posonlyargs + a.args) - len(a.defaults)]]
    required += [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    kw = []
    for group, value in ((_HOST_ARGS, "host"), (_PORT_ARGS, "port")):
        hit = next((n for n in group if n in names), None)
        if hit:
            kw.append(f"{hit}={value}")
    unknown = [r for r in required if r not in _HOST_ARGS + _PORT_ARGS]
    if unknown:
        raise BuildError(f"{var}() needs arguments {unknown} that the Space cannot give: give them defaults")
    return ", ".join(kw), bool(kw)


def render_app(manifest: Manifest, plan: dict[str, str]) -> str:
    """app.py: imports the app from ``training.app`` and serves it on the Space's address."""
    mod = manifest.app_module
    base = mod.replace(".", "/")
    path = next((p for p in (f"{base}/__init__.py", f"{base}.py") if p in plan), None)
    source_hint = manifest.package + "/" + "/".join(mod.split(".")[1:]) + "/"
    if path is None:
        return templates.APP_MISSING.substitute(module=mod, source=source_hint)
    fns = _functions(_read(manifest.root, plan[path]).decode("utf-8"))
    # a launcher that takes host and port first: it serves the app the way the project styles it
    for name in _LAUNCHERS:
        if name in fns:
            kw, takes = _call_for(fns[name], f"{mod}.{name}")
            if not takes:
                continue
            call = f'    print(f"OpenLLM Space on http://{{host}}:{{port}}", flush=True)\n    {name}({kw})'
            return templates.APP.substitute(module=mod, function=name, call=call)
    for name in _BUILDERS:
        if name in fns:
            _call_for(fns[name], f"{mod}.{name}")
            call = (
                f"    demo = {name}()\n"
                f'    print(f"OpenLLM Space on http://{{host}}:{{port}}", flush=True)\n'
                f"    demo.launch(server_name=host, server_port=port)"
            )
            return templates.APP.substitute(module=mod, function=name, call=call)
    raise BuildError(
        f"{plan[path]} defines none of {', '.join(_BUILDERS + _LAUNCHERS)}: the Space's app.py "
        "needs one (a builder returning a gradio Blocks, or a launcher taking host and port)"
    )


def _gradio_version() -> str:
    try:
        from importlib.metadata import version

        return version("gradio")
    except Exception as exc:
        raise BuildError(
            "gradio is not installed here: the README's sdk_version is the gradio in use; "
            "install the project (pip install -e .)"
        ) from exc


def hardware_of(manifest: Manifest) -> str:
    """The Space hardware the build is for: [readme] suggested_hardware, else cpu-basic."""
    return str(manifest.readme.get("suggested_hardware") or DEFAULT_HARDWARE)


def with_hardware(manifest: Manifest, hardware: str | None) -> Manifest:
    """``manifest`` built for ``hardware`` (``--hardware``); unchanged for None."""
    if not hardware:
        return manifest
    return replace(manifest, readme={**manifest.readme, "suggested_hardware": hardware})


def _tab_lines(manifest: Manifest, plan: dict[str, str]) -> str:
    """The README's list of the app's tabs, read (as a literal, importing nothing) from the TABS of the app's
    tabs module; empty when the Space has none."""
    path = f"{manifest.package_name}/{_TABS_MODULE}"
    if path not in plan:
        return ""
    for node in ast.parse(_read(manifest.root, plan[path]).decode("utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TABS" for t in node.targets):
            tabs = ast.literal_eval(node.value)
            return "\n".join(f"- **{label}**: {what}." for _id, label, what in tabs)
    return ""


def render_readme(manifest: Manifest, pyproject: dict, plan: dict[str, str] | None = None) -> str:
    import yaml

    project = pyproject.get("project", {})
    r = dict(manifest.readme)
    lic = r.pop("license", None) or project.get("license", "")
    if isinstance(lic, dict):
        lic = lic.get("text", "")
    lic = _LICENSES.get(str(lic).lower(), str(lic).lower() or "other")
    meta = {
        "title": r.pop("title", "OpenLLM"),
        "emoji": r.pop("emoji", "🦙"),
        "colorFrom": r.pop("colorFrom", "indigo"),
        "colorTo": r.pop("colorTo", "green"),
        "sdk": "gradio",
        "sdk_version": _gradio_version(),
        "app_file": "app.py",
        # the Python and gradio the tests ran with (requirements.txt pins the rest the same way)
        "python_version": ".".join(str(x) for x in sys.version_info[:3]),
        "license": lic,
        "suggested_hardware": r.pop("suggested_hardware", DEFAULT_HARDWARE),
        "hf_oauth": True,
        "hf_oauth_scopes": list(r.pop("hf_oauth_scopes", OAUTH_SCOPES)),
        "startup_duration_timeout": r.pop("startup_duration_timeout", STARTUP_TIMEOUT),
    }
    r.pop("suggested_storage", None)  # persistent storage is gone from Spaces: the hub ignores it
    models, datasets = r.pop("models", []), r.pop("datasets", [])
    meta.update(r)  # short_description, pinned, tags, ...
    meta["models"] = list(models)
    meta["datasets"] = list(datasets)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    urls = project.get("urls", {}) or {}
    homepage = urls.get("Homepage") or urls.get("Repository") or "https://github.com/louischua/openllm"
    body = templates.README_BODY.substitute(
        title=meta["title"], homepage=homepage, tabs=_tab_lines(manifest, plan or {}) or "- (no app in this build)"
    )
    return f"---\n{front}---\n\n" + body


def _import_cache_path() -> Path:
    from .state import cache_dir

    return cache_dir() / "space-build" / "imports-v2.json"  # v2: require() calls count as imports


def _load_import_cache() -> dict:
    try:
        return json.loads(_import_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_import_cache(entries: dict) -> None:
    """Only the entries of this build: the cache never grows past the tree's size."""
    path = _import_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(entries))
    except OSError:  # a cache: never worth failing a build for
        pass


def render(manifest: Manifest) -> BuildResult:
    """Everything the build writes, in memory: resolved, checked, not yet on disk."""
    root = manifest.root
    plan = manifest.plan()
    pyproject = read_pyproject(root)
    contents: dict[str, bytes] = {}
    notes: list[str] = []
    for path, how in manifest.generated.items():
        if how == "app":
            contents[path] = render_app(manifest, plan).encode()
        elif how == "readme":
            contents[path] = render_readme(manifest, pyproject, plan).encode()
        elif how == "gitignore":
            contents[path] = templates.GITIGNORE.encode()
        elif how == "requirements":
            continue  # below, once every Python file is known
        else:
            src = root / how
            if not src.is_file():
                raise BuildError(f"space.toml: {path} is copied from {how}, which does not exist in {root}")
            contents[path] = src.read_bytes()

    # dependency resolution over every Python file the Space will hold
    py = {p: _read(root, s).decode("utf-8") for p, s in plan.items() if p.endswith(".py")}
    py.update({p: c.decode("utf-8") for p, c in contents.items() if p.endswith(".py")})
    cache = _load_import_cache()
    index = ModuleIndex(py, cache)
    main_pkg = Path(manifest.package).name
    project_names = {main_pkg, manifest.package_name}
    renamed = {main_pkg: manifest.package_name}
    entry = module_name("app.py") if "app.py" in contents or "app.py" in plan else None
    closure = import_closure(index, entry, project_names, renamed) if entry else []
    for name, path in sorted(index.paths.items()):
        if "/" in path and not path.startswith(manifest.package_name + "/"):
            import_closure(index, name, project_names, renamed)  # scripts: theirs must resolve too
    imports = third_party(index, sorted(index.paths), project_names)
    if index.used != cache:
        _save_import_cache(index.used)
    reqs, req_notes = requirements(imports, pyproject, manifest.data_packages)
    reqs = pin(reqs, hardware_of(manifest))
    notes += req_notes
    if "requirements.txt" in manifest.generated:
        contents["requirements.txt"] = (templates.REQUIREMENTS_HEADER + "\n".join(reqs) + "\n").encode()

    files: dict[str, str] = {}
    sources: dict[str, str] = {}
    for p, s in plan.items():
        files[p] = sha256_file(root / s)
        sources[p] = s
    for p, c in contents.items():
        files[p] = sha256_bytes(c)
        sources[p] = "generated"
    return BuildResult(
        out=None,
        files=dict(sorted(files.items())),
        sources=dict(sorted(sources.items())),
        closure=closure,
        requirements=reqs,
        notes=notes,
        contents=contents,
    )


def is_earlier_build(folder: Path) -> bool:
    """A folder this command built: the generated entry point, requirements and the package copy."""
    return all((Path(folder) / p).is_file() for p in ("app.py", "requirements.txt", "training/__init__.py"))


def write(result: BuildResult, manifest: Manifest, out: Path) -> None:
    """Write the tree into ``out`` (absent, empty, or an earlier build, which is replaced whole), then check
    every file's hash."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_earlier_build(out))):
        raise BuildError(f"{out} exists and is not an earlier Space build: give a new or empty folder to --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".space-build-", dir=out.parent))
    try:
        for p, s in result.sources.items():
            dest = tmp / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            if s == "generated":
                dest.write_bytes(result.contents[p])
            else:
                shutil.copyfile(manifest.root / s, dest)
        written = tree_hashes(tmp)
        if written != result.files:
            bad = sorted(set(written.items()) ^ set(result.files.items()))
            raise BuildError(f"the built tree does not match its sources: {sorted({p for p, _ in bad})[:10]}")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result.out = out


def source_commit(root: Path) -> str:
    """The main repository's HEAD (with ``+dirty`` when the synced files have local edits), or ''."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def build(
    out: str | os.PathLike | None,
    root: str | os.PathLike | None = None,
    *,
    clean: bool = False,
    hardware: str | None = None,
) -> BuildResult:
    """Build the Space from the repository at ``root`` (default: found from the current folder) into ``out``
    (None: only resolve and hash, write nothing), for ``hardware`` (default: space.toml's, else cpu-basic).
    An earlier build in ``out`` is replaced whole; ``clean`` is kept for callers that asked for that
    explicitly."""
    manifest = with_hardware(load_manifest(root), hardware)
    result = render(manifest)
    if out is not None:
        out = Path(out).resolve()
        if out == manifest.root or out in manifest.root.parents or (out / ".git").exists():
            raise BuildError(f"refusing to build into {out}: it is a git repository or holds the sources")
        write(result, manifest, out)
    return result
