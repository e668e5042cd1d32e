"""The structure ARCHITECTURE.md describes holds: layers import only downwards, the method and
inference run without the training engine, no import cycles, no long functions."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ssal"

# lowest first; a module may import its own layer and the ones before it (ARCHITECTURE.md)
LAYERS = {
    "method": [
        "ssal", "ssal.files", "ssal.grouping", "ssal.conventions", "ssal.layouts", "ssal.features",
        "ssal.model", "ssal.loss", "ssal.predict", "ssal.analysis", "ssal.scores", "ssal.recipe",
        "ssal.runs", "ssal.backbones", "ssal.backbones.transformers", "ssal.data",
        "ssal.data.arrays", "ssal.data.readers", "ssal.data.safe_pickle", "ssal.data.splits",
        "ssal.data.transforms", "ssal.data.decoding", "ssal.data.loaders",
        "ssal.card", "ssal.checkpoint", "ssal.inference", "ssal.evaluate", "ssal.errors",
        "ssal.config_files", "ssal.args",
    ],
    "engine": [
        "ssal.data.base", "ssal.data.in_memory", "ssal.data.image_folder", "ssal.data.shards",
        "ssal.data.registry", "ssal.metrics", "ssal.train", "ssal.callbacks",
        "ssal.loggers", "ssal.lightning_adapter", "ssal.config_errors", "ssal.resume",
        "ssal.lightning_cli", "ssal.trainer",
    ],
    "report": ["ssal.report"],
    "workflows": ["ssal.demo", "ssal.study", "ssal.bench", "ssal.profiling"],
    "cli": ["ssal.cli"],
}  # fmt: skip
ENGINE_LIBRARIES = ("lightning", "torchmetrics", "rich", "matplotlib")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS.values()):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (
                best is None or len(p) > len(best[1])
            ):
                best = (rank, p)
    assert best is not None, f"{module} is in no layer of ARCHITECTURE.md"
    return best[0]


def imports() -> dict[str, list[ast.AST]]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        out[module_name(path)] = list(ast.walk(ast.parse(path.read_text())))
    return out


def imported(node: ast.AST) -> list[str]:
    """Modules ``node`` imports: ``import x``, ``from x import y``, and imports by name with a
    constant string, ``importlib.import_module("x")`` or ``import_module("x")``."""
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.Call) and node.args and _is_import_module(node.func):
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return [first.value]
    return []


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "import_module"
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "import_module"
        and isinstance(func.value, ast.Name)
        and func.value.id == "importlib"
    )


def test_imports_by_name_are_seen():
    tree = ast.parse(
        "import importlib\nfrom importlib import import_module\n"
        "importlib.import_module('ssal.a')\nimport_module('ssal.b')\n"
        "importlib.import_module(name)\nother.import_module('ssal.c')\n"
    )
    found = [m for node in ast.walk(tree) for m in imported(node)]
    assert sorted(found) == ["importlib", "importlib", "ssal.a", "ssal.b"]


def test_layers_import_only_downwards():
    wrong = []
    for mod, nodes in imports().items():
        for node in nodes:
            for target in imported(node):
                if target.startswith("ssal") and layer_of(target) > layer_of(mod):
                    wrong.append(f"{mod} imports {target}")
                top = target.split(".")[0]
                if layer_of(mod) == 0 and top in ENGINE_LIBRARIES:
                    wrong.append(f"{mod} (method layer) imports {target}")
    assert not wrong


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Which ``ssal`` modules each module imports, and the private names imported."""
    graph: dict[str, set[str]] = {}
    private = []
    for mod, nodes in imports().items():
        graph[mod] = set()
        for node in nodes:
            for target in imported(node):
                if target.startswith("ssal") and target != mod:
                    graph[mod].add(target)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssal"):
                private += [
                    f"{mod}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return graph, private


def assert_no_cycles(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph.get(m, ()):
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*path, n])
            if n in graph and n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_import_cycles_and_no_private_names():
    graph, private = import_graph()
    assert not private
    assert_no_cycles(graph)


def test_the_backbone_registry_knows_no_builder():
    """As ARCHITECTURE.md says of backbones/: names to entries apart from building them."""
    graph, _ = import_graph()
    inside = {m: {t for t in ts if t.startswith("ssal.backbones.")} for m, ts in graph.items()}
    wrong = [
        f"{m} imports {t}"
        for m in ("ssal.backbones.entry", "ssal.backbones.registry")
        for t in inside[m] - {"ssal.backbones.entry"}
    ]
    wrong += [
        f"{m} imports {t}"
        for m, targets in inside.items()
        if m.startswith("ssal.backbones.families")
        for t in targets & {"ssal.backbones.factory", "ssal.backbones.summary"}
    ]
    assert not wrong


def test_no_function_over_80_lines():
    long = [
        f"{mod}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for mod, nodes in imports().items()
        for node in nodes
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long


BOUNDARY = """
import sys
import torch
from PIL import Image
import ssal, ssal.grouping, ssal.layouts, ssal.model, ssal.loss, ssal.predict, ssal.scores
import ssal.card, ssal.checkpoint, ssal.inference, ssal.evaluate, ssal.recipe, ssal.runs
import ssal.analysis, ssal.data.transforms, ssal.data.readers, ssal.data.splits
from ssal.card import ModelCard, Preprocessing
from ssal.checkpoint import load_checkpoint
from ssal.inference import predict_images

groupings = [ssal.Grouping([0, 1] * 5), ssal.Grouping([0, 1, 2, 3, 4] * 2)]
net = ssal.create_model("small-cnn", 10, groupings)
card = ModelCard.of(net, "small-cnn", 10, Preprocessing.for_eval([0.5], [0.25]),
                    branch_weights=[1.0, 1.0], alpha=0.3)
state = {f"net.{k}": v for k, v in net.state_dict().items()}
torch.save({"ssal": card.to_dict(), "state_dict": state}, sys.argv[1] + "/model.ckpt")
Image.new("L", (40, 30), 128).save(sys.argv[1] + "/x.png")
model, card = load_checkpoint(sys.argv[1] + "/model.ckpt")
[record] = predict_images(model, card, [sys.argv[1] + "/x.png"])
assert len(record["branches"]) == 2
print(" ".join(m for m in ("lightning", "torchmetrics", "rich", "matplotlib") if m in sys.modules))
"""


@pytest.mark.slow
def test_method_and_inference_run_without_the_engine(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BOUNDARY, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded: {done.stdout.strip()}"
