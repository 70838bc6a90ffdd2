"""The import graph of src/openllm: every arrow points down the layer table, and there is no cycle, neither
between packages nor between modules, counting imports inside functions, ``importlib.import_module("...")``
strings and lazy ``_LAZY`` attribute tables. Read from the source (AST), so nothing is imported."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "openllm"
ROOT = "openllm"

# Higher imports lower or the same layer, never higher. Keyed by the first name under the package.
# A new module or package must be added here, to the layer it belongs to.
LAYER_NAMES = {4: "interfaces", 3: "workflows", 2: "components", 1: "foundations"}
LAYERS: dict[str, int] = {
    # interfaces: command line, web app, HTTP server, and the package facade (openllm.load)
    ROOT: 4,
    "__main__": 4,
    "cli": 4,
    "app": 4,
    "serve": 4,
    # workflows built from the components
    "publish": 3,
    "train": 3,
    "finetune": 3,
    "evaluate": 3,
    "export": 3,
    "compare": 3,
    "quickstart": 3,
    "space": 3,
    # components
    "hub": 2,
    "loading": 2,
    "generate": 2,
    "model": 2,
    "kvcache": 2,
    "sampling": 2,
    "constrain": 2,
    "tokenizer": 2,
    "prepare": 2,
    "shards": 2,
    "dataengine": 2,  # tokenize on datatrove (local, Ray, Slurm)
    "corpus": 2,
    "batches": 2,
    "checkpoint": 2,
    "optim": 2,
    "metrics": 2,
    "distributed": 2,
    "hf_compat": 2,
    "device": 2,
    "kernels": 2,
    "conversations": 2,
    # foundations: atomic file I/O, the run folder's layout, configs, errors, checksums
    "fsio": 1,
    "rundir": 1,
    "config": 1,
    "errors": 1,
    "hashing": 1,
    "redact": 1,  # secrets out of printed, logged and stored text
    "scratch": 1,  # temporary folders that a killed process's successor removes
}

# Private names that one module still takes from another (importer, owner, name); each is a debt, named here so
# that the check passes while it is paid. Keep it empty.
PRIVATE_ALLOWED: frozenset[tuple[str, str, str]] = frozenset()

# Imports whose target the AST cannot read (a computed module name), and what they may load.
DYNAMIC = {
    "openllm.cli": "openllm.cli.",  # the command table: openllm.cli.<command module>
}


# --- the graph ------------------------------------------------------------------------------------------


def find_modules(src: Path, root: str = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``src`` (a package folder named ``root``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([root, *parts])] = path
    return out


@functools.cache
def _read_nodes(path: Path, mtime_ns: int, size: int) -> tuple[ast.AST, ...]:
    return tuple(ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))


def source_nodes(path: Path) -> tuple[ast.AST, ...]:
    """Every node of the file's AST (``ast.walk`` order), parsed once per version of the file: the real tree is
    read by several tests here and in other files (parsing all of src/openllm is most of their time)."""
    st = path.stat()
    return _read_nodes(path, st.st_mtime_ns, st.st_size)


def parse_source(path: Path) -> ast.Module:
    """The file's AST, shared with the other checks that read all of src/openllm (tests/test_errors.py)."""
    tree = source_nodes(path)[0]  # ast.walk starts at the root
    assert isinstance(tree, ast.Module)
    return tree


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(name: str, level: int, package: str) -> str:
    if level == 0:
        return name
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _relative_string(name: str, anchor: str) -> str:
    """``importlib.import_module(name, anchor)`` as a dotted name."""
    if not name.startswith("."):
        return name
    level = len(name) - len(name.lstrip("."))
    return _resolve(name[level:], level, anchor)


def _anchor(arg: ast.expr | None, module: str, package: str) -> str:
    if isinstance(arg, ast.Name) and arg.id == "__name__":
        return module
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return package


def imports_of(module: str, path: Path, known: dict[str, Path], root: str = ROOT) -> tuple[set[str], list[str]]:
    """(modules of the package that ``module`` imports anywhere in its file, problems found while reading).
    Importing ``a.b.c`` from outside ``a.b`` also runs ``a.b``'s ``__init__``: that is an arrow too."""
    package = _package_of(module, path)
    raw: set[str] = set()
    problems: list[str] = []
    for node in source_nodes(path):
        if isinstance(node, ast.Import):
            raw.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, package)
            for a in node.names:  # a submodule, or a name defined in ``base`` itself
                if base == root and a.name.startswith("__"):
                    continue  # the package's metadata (__version__): no code of the facade runs
                raw.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
        ):
            arg = node.args[0] if node.args else None
            anchor = _anchor(node.args[1] if len(node.args) > 1 else None, module, package)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                raw.add(_relative_string(arg.value, anchor))
            elif isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name) and "LAZY" in arg.value.id.upper():
                pass  # a lazy table's entry: the table itself is read below
            elif module in DYNAMIC:
                raw.update(m for m in known if m.startswith(DYNAMIC[module]))
            else:
                problems.append(
                    f"{module}:{node.lineno} imports a computed module name; add it to DYNAMIC "
                    f"in tests/test_imports.py with the modules it may load"
                )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and "LAZY" in t.id.upper() for t in targets):
                for v in node.value.values:  # name -> module, loaded on first attribute access
                    if isinstance(v, ast.Constant) and isinstance(v.value, str):
                        raw.add(_relative_string(v.value, package))
    out: set[str] = set()
    for name in raw:
        if name != root and not name.startswith(root + "."):
            continue  # not ours (stdlib, third party)
        while name not in known and "." in name:  # `from .x import name` where name is not a module
            name = name.rpartition(".")[0]
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # the target and the packages above it that it runs
            target = ".".join(parts[:i])
            if i < len(parts) and (module == target or module.startswith(target + ".")):
                continue  # a package the importer is itself inside: already running
            if target != module:
                out.add(target)
        if name == root and module != root:
            out.add(root)
    return out, problems


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(module: str, path: Path, known: dict[str, Path], root: str = ROOT) -> list[tuple[int, str, str]]:
    """(line, other module, private name) for each private name (``_x``, not ``__x__``) that ``module`` takes
    from another module of the package: ``from .x import _name``, ``from . import x`` then ``x._name``,
    ``import pkg.x as x`` then ``x._name``, and ``pkg.x._name`` spelled out. A private module (``from . import
    _impl``) is the package's own business: only names inside modules count."""
    package = _package_of(module, path)
    aliases: dict[str, str] = {}  # a local name -> the package's module it is bound to
    found: list[tuple[int, str, str]] = []
    for node in source_nodes(path):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, package)
            if base != root and not base.startswith(root + "."):
                continue
            for a in node.names:
                target = f"{base}.{a.name}"
                if target in known:  # a module: its private names are reached as attributes (below)
                    aliases[a.asname or a.name] = target
                elif _private(a.name) and base != module:
                    found.append((node.lineno, base, a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known and a.asname:
                    aliases[a.asname] = a.name
                elif a.name == root or a.name.startswith(root + "."):
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
    for node in source_nodes(path):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        parts, value = [], node.value  # the dotted name the attribute is read from: x, or pkg.x.y
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in aliases:
            continue
        owner = ".".join([aliases[value.id], *reversed(parts)])
        if owner in known and owner != module:
            found.append((node.lineno, owner, node.attr))
    return sorted(set(found))


def layer_key(module: str, root: str = ROOT) -> str:
    return module.split(".")[1] if "." in module else root


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One cycle, as "a -> b -> ... -> a", through each strongly connected part of ``graph`` that has one,
    naming the part's other members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    parts: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                part.add(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph.get(v, ()):
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for part in parts:
        start = min(part)
        path, seen = [start], {start}
        while True:  # walk inside the part until a node repeats
            nxt = min(w for w in graph[path[-1]] if w in part)
            if nxt in seen:
                cycle = path[path.index(nxt) :] + [nxt]
                rest = sorted(part - set(cycle))
                cycles.append(" -> ".join(cycle) + (f" (also in this loop: {', '.join(rest)})" if rest else ""))
                break
            path.append(nxt)
            seen.add(nxt)
    return sorted(cycles)


def check(
    src: Path, root: str = ROOT, layers: dict[str, int] = LAYERS, private_allowed: frozenset = frozenset()
) -> list[str]:
    """Every breach of the layering in the package at ``src``, as readable lines (empty: all is well): an
    arrow up, a cycle, a module outside the layer table, and a private name taken from another module (unless
    ``(importer, owner, name)`` is in ``private_allowed``)."""
    known = find_modules(src, root)
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for module, path in known.items():
        graph[module], found = imports_of(module, path, known, root)
        problems += found
        for line, owner, name in private_uses(module, path, known, root):
            if (module, owner, name) not in private_allowed:
                problems.append(
                    f"{module}:{line} uses {owner}.{name}, a private name of another module: make it public "
                    f"(no underscore, in __all__) or move it where both can use it"
                )
    for module in known:
        if layer_key(module, root) not in layers:
            problems.append(
                f"{module} is not in the layer table: add {layer_key(module, root)!r} to LAYERS "
                f"in tests/test_imports.py, in the layer it belongs to"
            )
    for module, targets in sorted(graph.items()):
        a = layers.get(layer_key(module, root))
        for t in sorted(targets):
            b = layers.get(layer_key(t, root))
            if a is not None and b is not None and b > a:
                problems.append(
                    f"{module} ({LAYER_NAMES.get(a, a)}) imports {t} ({LAYER_NAMES.get(b, b)}): an arrow pointing up"
                )
    for cycle in find_cycles(graph):
        problems.append("module import cycle: " + cycle)
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        a = layer_key(module, root)
        packages.setdefault(a, set()).update(k for k in map(lambda t: layer_key(t, root), targets) if k != a)
    for cycle in find_cycles(packages):
        problems.append("package import cycle: " + cycle)
    return problems


# --- the tests ------------------------------------------------------------------------------------------


def test_the_package_has_no_upward_arrow_and_no_cycle():
    problems = check(SRC, private_allowed=PRIVATE_ALLOWED)
    assert not problems, "\n".join(problems)


def test_the_allowed_private_uses_still_exist():
    """An entry of PRIVATE_ALLOWED that the code no longer needs goes: the list only shrinks."""
    known = find_modules(SRC)
    used = {(m, owner, name) for m, p in known.items() for _, owner, name in private_uses(m, p, known)}
    assert not PRIVATE_ALLOWED - used, sorted(PRIVATE_ALLOWED - used)


def test_the_graph_sees_lazy_imports():
    """The real tree's graph holds the lazy arrows: a function-level import and the hub's hidden ones."""
    known = find_modules(SRC)
    loading, _ = imports_of("openllm.loading", known["openllm.loading"], known)
    assert "openllm.hub" in loading  # `from .hub import download_model` inside load()
    everything = {t for m, p in known.items() for t in imports_of(m, p, known)[0]}
    assert "openllm.cli.hub" in everything  # through the command table's computed names


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "pkg"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


LAYERS_FOR_TESTS = {"pkg": 4, "hub": 2, "loading": 2, "export": 3, "rundir": 1}


def test_a_loop_through_a_lazy_table_and_a_function_import_is_found(tmp_path):
    """The shape the hub had: loading imports the hub in a function, the hub's __init__ loads hub.models
    through importlib from a _LAZY table, and hub.models imports loading and export."""
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "rundir.py": "",
            "loading.py": "from .rundir import x\ndef load():\n    from .hub import download_model\n",
            "export/__init__.py": "",
            "export/hf.py": "from ..loading import load\n",
            "hub/__init__.py": "_LAZY = {'download_model': '.models'}\ndef __getattr__(n):\n"
            "    import importlib\n    return importlib.import_module(_LAZY[n], __name__)\n",
            "hub/models.py": "def stage():\n    from ..export.hf import export_hf\n    from ..loading import load\n",
        },
    )
    problems = check(src, "pkg", LAYERS_FOR_TESTS)
    assert any(
        "pkg.hub.models (components) imports pkg.export.hf (workflows): an arrow pointing up" in p for p in problems
    ), problems
    assert any(
        p.startswith("module import cycle:") and "pkg.loading" in p and "pkg.hub.models" in p for p in problems
    ), problems
    assert any(p.startswith("package import cycle:") for p in problems), problems


def test_import_module_strings_and_unlisted_modules_are_caught(tmp_path):
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "rundir.py": "import importlib\ndef f():\n    return importlib.import_module('pkg.hub')\n",
            "hub/__init__.py": "",
            "newthing.py": "def g(name):\n    import importlib\n    return importlib.import_module(name)\n",
        },
    )
    problems = check(src, "pkg", LAYERS_FOR_TESTS)
    assert "pkg.rundir (foundations) imports pkg.hub (components): an arrow pointing up" in problems
    assert any("pkg.newthing is not in the layer table: add 'newthing'" in p for p in problems), problems
    assert any("pkg.newthing:3 imports a computed module name" in p for p in problems), problems


def test_a_private_name_taken_from_another_module_is_caught(tmp_path):
    """Every spelling of reaching into another module's private names fails the check; a module's own private
    names, dunders and private names of other libraries do not."""
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "rundir.py": "_LOCK = 1\ndef _helper():\n    return _LOCK\n__all__ = ['x']\n",
            "loading.py": "from .rundir import _helper, __all__\nfrom os import _exit\n",
            "hub/__init__.py": "",
            "hub/models.py": "from .. import rundir\ndef f():\n    return rundir._LOCK\n",
            "hub/local.py": "import pkg.rundir as R\nimport pkg.hub.models\n"
            "def g():\n    return R._helper(), pkg.hub.models._x, R.__name__\n",
            "export/__init__.py": "def h():\n    from ..rundir import _LOCK as lock\n    return lock\n",
        },
    )
    problems = [p for p in check(src, "pkg", LAYERS_FOR_TESTS) if "private name" in p]
    assert [p.split(" uses ")[0] + " " + p.split(" uses ")[1].split(",")[0] for p in problems] == [
        "pkg.export:2 pkg.rundir._LOCK",
        "pkg.hub.local:4 pkg.hub.models._x",
        "pkg.hub.local:4 pkg.rundir._helper",
        "pkg.hub.models:3 pkg.rundir._LOCK",
        "pkg.loading:1 pkg.rundir._helper",
    ], problems
    allowed = frozenset({("pkg.loading", "pkg.rundir", "_helper")})
    assert not any(p.startswith("pkg.loading:") for p in check(src, "pkg", LAYERS_FOR_TESTS, allowed))


def test_a_clean_tree_passes(tmp_path):
    src = _tree(
        tmp_path,
        {
            "__init__.py": "def load():\n    from .loading import load\n",
            "rundir.py": "",
            "loading.py": "from . import rundir\n",
            "hub/__init__.py": "from .models import download_model\n",
            "hub/models.py": "from ..rundir import x\n",
            "export/__init__.py": "from ..hub import download_model\nfrom ..loading import load\n",
        },
    )
    assert check(src, "pkg", LAYERS_FOR_TESTS) == []


def test_the_hub_is_transport_only():
    """hub/ moves files and versions; it never reaches for what a run, a model, a config or an export is."""
    known = find_modules(SRC)
    allowed = {"hub", "errors", "rundir", "hashing", "redact", "scratch"}
    reached = {
        (m, t)
        for m, p in known.items()
        if layer_key(m) == "hub"
        for t in imports_of(m, p, known)[0]
        if layer_key(t) not in allowed
    }
    assert not reached, sorted(reached)
