"""The package's layers, as its folders show them: a module imports only
from its own layer or below (function-level imports included), and no
modules import each other in a cycle."""
import ast

from conftest import ROOT

# lower number = lower layer; each layer may import the ones below it
LAYERS = {"constants": 0, "errors": 0, "environment": 0, "core": 1, "io": 1, "model": 2, "report": 2, "runtime": 3,
          "convert": 4, "pipeline": 5, "bench": 6, "train": 6, "cli": 7}
PACKAGE = ROOT / "centernet"


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def layer(module):
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def imports_of(path):
    """The centernet modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("centernet"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("centernet"))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != "centernet"}


def graph():
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    files = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert folders | files <= set(LAYERS)


def test_imports_point_down():
    upward = [(m, i) for m, deps in graph().items() for i in deps
              if layer(i) > layer(m) and not (i.endswith("__init__"))]
    assert upward == []


def test_no_import_cycle():
    deps = graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in deps.get(m, ()):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in deps:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_library_modules_have_no_main():
    """Entry points are the scripts (and centernet/cli); the library has none."""
    with_main = [module_name(p) for p in PACKAGE.rglob("*.py") if "cli" not in p.parts
                 and any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body)]
    assert with_main == []
