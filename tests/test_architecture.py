"""The dependency arrows of DESIGN.md, and the public API, are kept honest by tests."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import async_core
import async_core.cli
import async_core.harness
import async_core.store
import async_core.webhooks
import async_core.wire
import legacy_bridge
from tests.servers import REPO

FORBIDDEN = {
    # async_core: the async world only; sync agents arrive through a SyncRunner.
    "async_core": {"flask", "werkzeug", "janus", "gunicorn", "gevent", "legacy_bridge",
                   "migration"},
    # Importing the CLI loads no extension: only building the command line looks for them.
    "async_core.cli": {"flask", "werkzeug", "janus", "gunicorn", "gevent", "legacy_bridge",
                       "migration"},
    "async_core.wire": {"flask", "werkzeug", "janus", "gunicorn", "gevent", "starlette",
                        "httpx", "anyio", "legacy_bridge", "migration"},
    # The engine alone (what the WSGI side uses) loads no ASGI server or framework.
    "async_core.engine": {"starlette", "sse_starlette", "uvicorn", "flask", "janus", "gevent"},
    # The WSGI side never imports Starlette (nor a2wsgi, which the hybrid front replaced).
    "legacy_bridge": {"starlette", "sse_starlette", "uvicorn", "a2wsgi", "migration"},
    "legacy_bridge.app": {"starlette", "sse_starlette", "uvicorn", "a2wsgi", "migration"},
}
IMPORTS = {
    "async_core": "import async_core; async_core.create_app; async_core.serve",
    "async_core.cli": "import async_core.cli",
    "async_core.wire": "import async_core.wire",
    "async_core.engine": "import async_core; async_core.StreamService",
    "legacy_bridge": "import legacy_bridge; legacy_bridge.StreamBridge",
    "legacy_bridge.app": "import legacy_bridge.app; legacy_bridge.app.create_app()",
}


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_nothing_it_must_not(package: str) -> None:
    """Importing the package (in a fresh interpreter) loads none of its forbidden modules."""
    code = (f"import sys, json; {IMPORTS[package]}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & FORBIDDEN[package], f"{package} loaded {loaded & FORBIDDEN[package]}"


@pytest.mark.parametrize("module", [async_core, async_core.cli, async_core.harness,
                                    async_core.wire, async_core.store,
                                    async_core.webhooks, legacy_bridge])
def test_public_api_is_explicit(module: object) -> None:
    """Every name in __all__ exists, and __all__ is sorted and has no duplicates."""
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names) or module is async_core.wire
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None


def test_async_core_public_api_is_pinned() -> None:
    """Changing the public API of async_core is a deliberate act: update this list."""
    assert async_core.__all__ == [
        "Agent", "AgentEnd", "AgentFailure", "AgentRegistry", "AgentRequest", "AgentSource",
        "AsyncSource", "Batch", "ChatCall", "ConfigError", "Finish", "FinishHook", "Lifecycle",
        "LifecycleState", "METRICS_CONTENT_TYPE", "Outcome", "PAGE_CONTENT_TYPE",
        "PolicyMachine", "PolicyState", "SessionSettings", "Settings",
        "StateUpdate", "StreamBridgeError", "StreamEngine", "StreamInfo", "StreamPolicy",
        "StreamRecord", "StreamService", "StreamSession", "Streamable", "SyncRunner", "Usage",
        "WebSocketSession", "bound_send_buffer", "cancel_and_wait", "cors_headers",
        "create_app", "create_app_from_env", "default_registry", "gunicorn_worker_started",
        "install_sigterm_drain",
        "load_settings", "parse_chat", "render_metrics", "render_page", "serve",
    ]



def test_cross_package_public_apis_are_pinned() -> None:
    """What legacy_bridge and migration reach for in other packages is exported on purpose."""
    assert legacy_bridge.__all__ == [
        "Bridge", "Endpoint", "FIRST_ON_LOOP", "JanusRunner", "LOOP_BRIDGE", "ROUTE_HOOK",
        "STREAM_ONLY_HEADERS", "StreamBridge", "ThreadGlue", "WSGIBody", "bridges",
        "create_app", "error_response", "janus_runner", "serve",
    ]
    assert async_core.store.__all__ == [
        "IN_PROGRESS", "Persistence", "Snapshot", "Store", "StoreConfigError",
        "TranscriptWriter", "add_db_parser", "create_engine", "current_revision",
        "database_url", "downgrade", "ensure_current", "head_revision", "is_sqlite",
        "preflight", "run_db", "sqlite_path", "stored_outcome", "upgrade",
    ]

# --- Packages talk through public names, and no module imports itself back (issue 12) ---

PACKAGES = ("async_core", "legacy_bridge", "migration")


def _module_files(root: Path) -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package is its __init__)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements at any depth (functions too), minus ``if TYPE_CHECKING:`` bodies."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch runs
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, modules: Mapping[str, Path]
             ) -> Iterator[tuple[int, str, str]]:
    """(line, dotted path imported, module it loads) for each name ``name`` imports.

    ``from a.b import c`` imports ``a.b.c``; it loads module ``a.b.c`` when that is a
    module, else ``a.b`` (``c`` is a name in it). Relative imports are resolved.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, alias.name
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            dotted = f"{base}.{alias.name}"
            yield node.lineno, dotted, dotted if dotted in modules else base


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def import_graph(root: Path = REPO) -> tuple[list[str], dict[str, set[str]]]:
    """The private cross-package imports (``file:line: dotted.path``) and the module graph."""
    modules = _module_files(root)
    private: list[tuple[str, int, str]] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for lineno, dotted, target in _imports(name, path, modules):
            other = dotted.split(".")[0]
            if other in PACKAGES and other != name.split(".")[0] and _is_private(dotted):
                private.append((str(path.relative_to(root)), lineno, dotted))
            if target in modules and target != name:
                graph[name].add(target)
    return [f"{file}:{line}: {dotted}" for file, line, dotted in sorted(private)], graph


def import_cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """One shortest cycle (``a -> b -> a``) per strongly connected group of modules.

    A group larger than its shortest cycle has further cycles through the same modules:
    the line names the rest of the group too.
    """
    lines = []
    for group in _strong_groups(graph):
        cycle = _shortest_cycle(graph, group)
        extra = sorted(group - set(cycle))
        lines.append(" -> ".join(cycle)
                     + (f"  (the group also holds {', '.join(extra)})" if extra else ""))
    return lines


def _strong_groups(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _shortest_cycle(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    best: list[str] = []
    for start in sorted(group):
        came_from: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in came_from:
            step = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w not in came_from:
                        came_from[w] = v
                        step.append(w)
            frontier = step
        cycle = [start]
        while len(cycle) == 1 or cycle[-1] != start:
            cycle.append(came_from[cycle[-1]])
        if not best or len(cycle) < len(best):
            best = cycle[::-1]
    return best


def test_no_package_imports_another_packages_private_modules() -> None:
    """No module imports a ``_private`` module or name of another top-level package."""
    private, _ = import_graph()
    assert not private, (f"{len(private)} private cross-package imports (export the name "
                         "in that package's __init__ instead):\n" + "\n".join(private))


def test_async_core_never_imports_legacy_bridge_or_migration() -> None:
    """Not even inside a function: the CLI finds their ``commands`` modules by name."""
    _, graph = import_graph()
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items()
                   if module.split(".")[0] == "async_core" for target in targets
                   if target.split(".")[0] in ("legacy_bridge", "migration"))
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules() -> None:
    """The module import graph (function-level imports included) has no cycle."""
    _, graph = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_import_checks_see_what_they_must(tmp_path: Path) -> None:
    """On a small tree, the checks find each private import and cycle, and nothing else."""
    files = {
        "async_core/__init__.py": "from ._x import f\n",
        "async_core/_x.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from legacy_bridge import _hidden\n"
                             "def f():\n    from . import _y\n"),
        "async_core/_y.py": "from ._x import f\n",
        "async_core/sub/__init__.py": "from .._x import f\nfrom ._z import g\n",
        "async_core/sub/_z.py": "g = 1\n",
        "legacy_bridge/__init__.py": "import async_core.sub._z\n",
        "legacy_bridge/m.py": ("from async_core import f, _y\nfrom async_core.sub import g\n"
                               "def h():\n    from async_core.sub._z import g\n"),
        "migration/__init__.py": "from legacy_bridge import m\nfrom legacy_bridge._m import k\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    private, graph = import_graph(tmp_path)
    assert private == ["legacy_bridge/__init__.py:1: async_core.sub._z",
                       "legacy_bridge/m.py:1: async_core._y",
                       "legacy_bridge/m.py:4: async_core.sub._z.g",
                       "migration/__init__.py:2: legacy_bridge._m.k"]
    assert graph["migration"] == {"legacy_bridge.m"}  # legacy_bridge._m is not a module here
    assert graph["async_core.sub"] == {"async_core._x", "async_core.sub._z"}
    assert import_cycles(graph) == ["async_core._x -> async_core._y -> async_core._x"]
    assert import_cycles({"a": {"b"}, "b": {"c", "a"}, "c": {"d"}, "d": {"a"}, "e": {"a"}}
                         ) == ["a -> b -> a  (the group also holds c, d)"]


# --- The environment is read in one place (issue 12 item 6) ---

ENV_READER = "async_core/_settings.py"  # Settings.from_env and load_settings
# Each other module that touches os.environ, and why it must.
ENV_EXCEPTIONS = {
    "async_core/_metrics.py": "PROMETHEUS_MULTIPROC_DIR is prometheus_client's own "
                              "variable: it picks its multiprocess mode at import, and the "
                              "renderer must pick the same collector",
    "async_core/_serve.py": "sets PROMETHEUS_MULTIPROC_DIR for uvicorn's worker processes "
                            "before they import prometheus_client",
    "async_core/harness/_process.py": "builds the environment of the servers it starts "
                                      "(a child process' environment, not a setting)",
    "legacy_bridge/gunicorn_conf.py": "a gunicorn config module: gunicorn's own settings "
                                      "(bind, workers, threads, worker class) checked with one "
                                      "line each, and PROMETHEUS_MULTIPROC_DIR set before "
                                      "prometheus_client is imported in the master",
    "migration/hybrid_gunicorn_conf.py": "sets PROMETHEUS_MULTIPROC_DIR before async_core "
                                         "(and so prometheus_client) is imported in the master",
    "migration/_hybrid_serve.py": "writes the environment gunicorn's workers inherit (serve "
                                  "--app/--threads/--flags-file, then execv); reads none",
}
_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_uses(root: Path = REPO) -> dict[str, list[int]]:
    """Lines that touch ``os.environ`` (or ``getenv``...), by file, in the three packages."""
    found: dict[str, list[int]] = {}
    for path in _module_files(root).values():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        lines = [node.lineno for node in ast.walk(tree)
                 if (isinstance(node, ast.Attribute) and node.attr in _ENV_NAMES
                     and isinstance(node.value, ast.Name) and node.value.id == "os")
                 or (isinstance(node, ast.ImportFrom) and node.module == "os"
                     and any(a.name in _ENV_NAMES for a in node.names))]
        if lines:
            found[str(path.relative_to(root))] = sorted(lines)
    return found


def test_only_the_settings_loader_reads_the_environment() -> None:
    """Every environment read outside the loader is a listed exception with its reason,
    and every listed exception still needs to be one."""
    uses = environment_uses()
    unexplained = {f: lines for f, lines in uses.items()
                   if f != ENV_READER and f not in ENV_EXCEPTIONS}
    assert not unexplained, ("read settings through async_core.load_settings (or "
                             f"Settings.from_env), not os.environ: {unexplained}")
    assert sorted(set(ENV_EXCEPTIONS) - set(uses)) == [], "stale ENV_EXCEPTIONS entries"


def test_the_environment_check_sees_what_it_must(tmp_path: Path) -> None:
    """On a small tree, each spelling of an environment read is found, and nothing else."""
    files = {
        "async_core/__init__.py": "import os\nx = os.environ.get('A')\n",
        "legacy_bridge/__init__.py": "from os import getenv\n",
        "migration/__init__.py": ("import os\ndef f(environ):\n    return environ.get('A')\n"
                                  "def g():\n    return os.getenv('B')\n"),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert environment_uses(tmp_path) == {"async_core/__init__.py": [2],
                                          "legacy_bridge/__init__.py": [1],
                                          "migration/__init__.py": [5]}


def imports_of_tests(root: Path = REPO) -> list[str]:
    """``file:line: module`` for each import of the ``tests`` package by a package module
    or a script (issue 12 item 8: the harness they share lives in ``async_core.harness``)."""
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    files += sorted((root / "scripts").glob("*.py"))
    found: list[tuple[str, int, str]] = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _import_nodes(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if not node.level else [])
            found += [(str(path.relative_to(root)), node.lineno, name) for name in names
                      if name.split(".")[0] == "tests"]
    return [f"{file}:{line}: {name}" for file, line, name in sorted(found)]


def test_no_script_or_package_module_imports_from_tests(tmp_path: Path) -> None:
    """The benchmarks, ``compare`` and the packages build on ``async_core.harness``, never on
    ``tests`` (which a user's installation does not have); the check sees both forms."""
    assert not imports_of_tests(), "\n".join(imports_of_tests())
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "b.py").write_text(
        "import tests.servers\ndef f():\n    from tests.clients import x\n"
        "from testsuite import y\n")
    assert imports_of_tests(tmp_path) == ["scripts/b.py:1: tests.servers",
                                          "scripts/b.py:3: tests.clients"]
