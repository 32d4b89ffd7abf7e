"""
The layering: the client does not depend on the server package (the pieces both use
live in neutral modules, and the old names stay importable from the server); no
twistchat module takes part in an import cycle; crypto depends on no other layer, and
the wire format only on crypto.

The import graph is read from the source with L{ast}, so imports under
C{TYPE_CHECKING} and inside functions count as dependencies too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import twistchat

PACKAGE = Path(twistchat.__file__).resolve().parent

#: Import cycles that another change removes; delete an entry when it is gone.
KNOWN_CYCLES: set[frozenset[str]] = set()


def test_client_imports_nothing_from_the_server() -> None:
    code = (
        "import sys, twistchat.client, twistchat.client.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('twistchat.server')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_old_names_still_importable() -> None:
    from twistchat.ratelimit import TokenBucket
    from twistchat.server.limits import TokenBucket as ServerBucket
    from twistchat.server.tls import tls_exporter as server_exporter
    from twistchat.tlsbinding import tls_exporter

    assert ServerBucket is TokenBucket
    assert server_exporter is tls_exporter


def test_token_bucket() -> None:
    from twistchat.ratelimit import TokenBucket

    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert bucket.take(100.0) and bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """
    Every module of C{package} by dotted name (a package by its own name).
    """
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """
    Each module of C{package} and the modules of C{package} it imports anywhere in its
    source. C{from package import name} counts as an import of the submodule
    C{package.name} when there is one, else of C{package}; a module's implicit import
    of its parent packages does not count.
    """
    modules = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        imported.add(f"{source}.{alias.name}")
                    elif source in modules:
                        imported.add(source)
        imported.discard(name)
        graph[name] = imported
    return graph


def external_imports(module: str) -> set[str]:
    """
    The top-level names of everything C{module} imports (absolute imports only).
    """
    path = _modules()[module]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """
    The strongly connected components of C{graph} with more than one module (Tarjan's
    algorithm, iterative), plus any module that imports itself.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == {frozenset("abc"), frozenset("de")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_graph_sees_type_checking_relative_and_late_imports(tmp_path: Path) -> None:
    """
    The graph counts what a C{sys.modules} check would miss: an import under
    C{TYPE_CHECKING} (as C{crypto.spake2plus} had from C{crypto.kdf}) or inside a
    function; relative imports resolve.
    """
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import thing\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.sub.b import B\n"
        "thing = 1\n"
    )
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text(
        "def late():\n    from ..a import thing\n    return thing\n"
        "import os, pkg.c\n"
    )
    (pkg / "c.py").write_text("from pkg import sub\n")
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.a", "pkg.c"},
        "pkg.c": {"pkg.sub"},
    }
    assert cycles(graph) == {frozenset({"pkg.a", "pkg.sub.b", "pkg.c", "pkg.sub"})}


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    unexpected = found - KNOWN_CYCLES
    assert not unexpected, f"import cycles: {[sorted(c) for c in unexpected]}"
    gone = KNOWN_CYCLES - found
    assert not gone, f"these cycles are gone; delete them from KNOWN_CYCLES: {gone}"


def test_crypto_depends_on_no_other_layer() -> None:
    """
    crypto imports only itself and the errors module: nothing from wire, server,
    client, tap or bench, and no Twisted (it is a library of pure functions and
    objects over the standard library and pycryptodome).
    """
    graph = import_graph()
    crypto = [name for name in graph if name.startswith("twistchat.crypto")]
    assert "twistchat.crypto.verifier" in crypto
    for name in crypto:
        outside = {
            dep for dep in graph[name]
            if not dep.startswith("twistchat.crypto") and dep != "twistchat.errors"
        }
        assert not outside, f"{name} imports {sorted(outside)}"
        assert external_imports(name) <= set(sys.stdlib_module_names) | {
            "Crypto", "twistchat"
        }, name


def test_wire_depends_only_on_crypto() -> None:
    graph = import_graph()
    for name in (n for n in graph if n.startswith("twistchat.wire")):
        outside = {
            dep for dep in graph[name]
            if not dep.startswith(("twistchat.wire", "twistchat.crypto"))
            and dep != "twistchat.errors"
        }
        assert not outside, f"{name} imports {sorted(outside)}"
    assert "twistchat.crypto.seal" in graph["twistchat.wire.messages"]


def test_shared_sizes_are_crypto_s() -> None:
    """
    The wire schema checks the sizes crypto defines: the same objects, not copies.
    """
    from twistchat.crypto import kdf, seal, spake2plus
    from twistchat.wire import messages

    for module, names in [
        (seal, ["SID_BYTES", "TAG_BYTES", "MAX_COUNTER", "PAD_BLOCK", "MAX_TEXT_BYTES",
                "MAX_CIPHERTEXT"]),
        (spake2plus, ["POINT_BYTES", "MAC_BYTES"]),
        (kdf, ["MIN_SALT_BYTES", "MAX_SALT_BYTES"]),
    ]:
        for name in names:
            assert getattr(messages, name) is getattr(module, name), name
    source = Path(messages.__file__).read_text("utf-8")
    for name in ["SID_BYTES", "TAG_BYTES", "MAX_COUNTER", "PAD_BLOCK", "POINT_BYTES",
                 "MAC_BYTES", "MAX_TEXT_BYTES", "MAX_CIPHERTEXT", "SESSION_ID_BYTES"]:
        assert f"\n{name} =" not in source, f"wire defines {name} again"


def test_no_private_modules_or_names_of_dependencies() -> None:
    """
    twistchat reaches its dependencies (Twisted, pycryptodome, pyOpenSSL, ...) only
    through their public modules and names: no C{Crypto.PublicKey._point}, no
    C{from twisted.x import _y}. Twisted's receiver's private buffer
    (C{_unprocessed}, C{_compatibilityOffset}) is not touched either.
    """
    offenders = []
    for name, path in _modules().items():
        source = path.read_text("utf-8")
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                if node.module.split(".")[0] in ("twistchat", "__future__"):
                    continue
                private = [p for p in node.module.split(".") if p.startswith("_")]
                private += [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{name}: from {node.module} import {private}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(p.startswith("_") for p in alias.name.split(".")[1:]):
                        offenders.append(f"{name}: import {alias.name}")
            elif isinstance(node, ast.Attribute) and node.attr in (
                "_unprocessed", "_compatibilityOffset"
            ):
                offenders.append(f"{name}: .{node.attr}")
    assert offenders == []
