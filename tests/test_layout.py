"""The package's layout: every module imports on its own, no import cycles (function-level imports
included), imports run one way between the sub-packages, and the CLI starts without torch."""

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "s3prl_adapters")

# sub-package -> sub-packages it must never import (layout: tools -> inference/bridge -> method; tasks and data below)
FORBIDDEN = {
    "method": {"bridge", "tools", "tasks", "data", "inference"},
    "bridge": {"tools", "inference"},
    "tasks": {"bridge", "tools", "inference"},
    "data": {"method", "bridge", "tools", "tasks", "inference"},
    "inference": {"tools"},
}


def _modules():
    found = {}
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), REPO)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return found


def _imports(name, path):
    """Every s3prl_adapters module `name` imports, at any depth of its code."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("s3prl_adapters")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("s3prl_adapters"):
                out.add(module)
                out |= {f"{module}.{a.name}" for a in node.names}
    return out


def _graph():
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state, stack = {}, []

    def visit(node):
        state[node] = "active"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "active":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _subpackage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_imports_run_one_way_between_subpackages():
    wrong = [(name, dep) for name, deps in _graph().items() for dep in deps
             if _subpackage(dep) in FORBIDDEN.get(_subpackage(name), set())]
    assert not wrong, wrong


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh package state (an import-order cycle would fail here)."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(_modules())!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 's3prl_adapters' or m.startswith('s3prl_adapters.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout


def test_cli_starts_without_torch_or_s3prl(tmp_path):
    code = (
        "import sys\n"
        "from s3prl_adapters.tools import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio', 's3prl'))\n"
        "print('HEAVY', heavy[:5])\n"
    )
    for argv in (["--help"], ["submit", "--help"], ["params", "--help"], ["submit", "-o", str(tmp_path / "p.zip")],
                 ["corpus-overrides", "speech_commands", str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert "HEAVY []" in proc.stdout, (argv, proc.stdout[-500:], proc.stderr[-1500:])
