"""Layers point down only: no module imports a layer above its own, at module level or inside a function.

A function-level import is still a dependency (it only hides a cycle until the function runs), so every import
in the file counts, `if TYPE_CHECKING:` ones included. Modules of one layer may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantdeploy"

# Bottom first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("quantdeploy.errors", "quantdeploy.settings", "quantdeploy.extras", "quantdeploy.checkpoint",
                    "quantdeploy.units", "quantdeploy.version")),
    ("grammars", ("quantdeploy.structured",)),  # constrained decoding: JSON schema / tools -> grammar, its state
    ("templates", ("quantdeploy.chat.templates", "quantdeploy.chat.jinja")),  # rendering, fallbacks, stop tokens
    ("interface", ("quantdeploy.backends.base",  # ModelSpec, LoadedModel, Backend: what every layer speaks
                   "quantdeploy.backends.generation",  # Generation, Usage, TokenLogprob: what a model hands back
                   "quantdeploy.chat.prepare", "quantdeploy.chat.tools",  # LoadedModel.chat: tools, response_format
                   "quantdeploy.chat.toolcalls",
                   "quantdeploy.offline.requests", "quantdeploy.offline.runner")),  # LoadedModel.generate_batch
    ("engine", ("quantdeploy.engine", "quantdeploy.batching")),  # decode loops, kernels, scheduling
    ("backends", ("quantdeploy.backends",)),  # one module per format family; they drive the engine
    ("registry", ("quantdeploy.registry",)),  # format -> backend, detection
    ("hub", ("quantdeploy.hub",)),  # pull, store: asks the registry what a repo is and which files it needs
    ("models", ("quantdeploy.models", "quantdeploy.inspection")),  # MODEL argument -> spec -> loaded model
    ("apps", ("quantdeploy.chat", "quantdeploy.server", "quantdeploy.bench", "quantdeploy.doctor",
              "quantdeploy.offline", "quantdeploy.testing")),
    ("api", ("quantdeploy",)),  # the package's public names (quantdeploy/__init__.py itself, nothing below it)
    ("cli", ("quantdeploy.cli", "quantdeploy.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (module.startswith(prefix + ".") and "." in prefix)
            if inside and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {Path(__file__).name}")
    return level


def imports(module: str) -> list[tuple[int, str]]:
    """(line, imported quantdeploy module) for every import statement in the module's file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else target))
    return [(line, t) for line, t in out if t == "quantdeploy" or t.startswith("quantdeploy.")]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer_of(module)
    upward = [f"line {line}: {target} ({LAYERS[layer_of(target)][0]})"
              for line, target in imports(module) if layer_of(target) > mine]
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports a layer above it: " + "; ".join(upward)


def test_the_check_sees_function_level_imports(tmp_path):
    """The parser finds an import hidden in a function body, relative or absolute."""
    module = "quantdeploy.chat.oneshot"
    found = {t for _, t in imports(module)}
    assert "quantdeploy.models" in found  # answer_once imports load_spec inside the function
    assert layer_of("quantdeploy.cli.common") > layer_of("quantdeploy.chat.oneshot")
    assert layer_of("quantdeploy.backends.fast") > layer_of("quantdeploy.engine.runner") \
        > layer_of("quantdeploy.backends.base") > layer_of("quantdeploy.chat.templates")
