"""The package layout: imports run one way (math <- data, feedback <- objective, loader <- the
rest), and the core imports with torch and numpy alone. docs/layout.md describes the floors."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import midas_data

PACKAGE = Path(midas_data.__file__).parent

# Floor of every part: a module may import only from lower floors or from its own folder.
FLOORS = {
    "functional": 1,
    "multilabel": 1,
    "controller": 1,
    "models": 1,
    "debug": 1,
    "errors": 0,
    "distributed": 0,
    "pair_layout": 0,
    "data": 2,
    "feedback": 2,
    "objective": 3,
    "loader": 3,
    "streaming": 3,
    "experiments": 4,
    "integrations": 4,
    "recipes": 4,
    "__main__": 5,
    "__init__": 5,
}
# Sideways imports on one floor that the layout allows: the recipes train with the
# experiments toolkit (its methods, metrics and report); the multi-label math reuses the
# single-label shares (functional never imports multilabel).
SIDEWAYS = {("recipes", "experiments"), ("multilabel", "functional")}
CORE = [name for name, floor in FLOORS.items() if floor <= 3 and name != "streaming"]


def part_of(module: str) -> str:
    """``midas_data.feedback.stats`` -> ``feedback``; ``midas_data`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every ``midas_data`` module that ``path`` imports (absolute names), with line numbers."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("midas_data"):
                continue
            if target == "midas_data":  # from . import functional
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("midas_data")]
    return found


def upward_imports(root: Path) -> list[str]:
    """Imports in the package at ``root`` that reach a part on the same floor or above."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        source = path.stem if path.parent == root else part_of(module_name(path, root))
        for line, target in imported_modules(path, root):
            dest = part_of(target)
            if dest != source and FLOORS[dest] >= FLOORS[source] and (source, dest) not in SIDEWAYS:
                wrong.append(
                    f"{path.relative_to(root)}:{line} ({source}, floor {FLOORS[source]}) imports "
                    f"{target} ({dest}, floor {FLOORS[dest]})"
                )
    return wrong


def test_every_part_has_a_floor():
    parts = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    assert parts - set(FLOORS) == set(), "give the new part a floor in FLOORS and in docs/layout.md"


def test_imports_run_one_way():
    assert upward_imports(PACKAGE) == []


def test_the_layout_check_reports_upward_and_sideways_imports(tmp_path):
    root = tmp_path / "midas_data"
    (root / "data").mkdir(parents=True)
    (root / "feedback").mkdir()
    (root / "__init__.py").write_text("from .objective import X\n")
    (root / "functional.py").write_text("import torch\n")
    (root / "objective.py").write_text("from . import functional\nfrom .data.batch import B\n")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "batch.py").write_text("from ..functional import f\nfrom .other import g\n")
    (root / "data" / "collate.py").write_text("from ..feedback.stats import StatsTable\n")
    (root / "feedback" / "__init__.py").write_text("")
    (root / "feedback" / "stats.py").write_text("from midas_data.objective import MidasObjective\n")
    assert upward_imports(root) == [
        "data/collate.py:1 (data, floor 2) imports midas_data.feedback.stats (feedback, floor 2)",
        "feedback/stats.py:1 (feedback, floor 2) imports midas_data.objective (objective, floor 3)",
    ]


def test_no_module_is_past_about_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 550
    }
    assert long == {}


CORE_ALLOWED = set(sys.stdlib_module_names) | {"torch", "numpy", "midas_data", "__future__"}
# What the extras install; the core must run with every one of them missing.
EXTRAS = [
    "tqdm",
    "matplotlib",
    "sklearn",
    "soundfile",
    "torchaudio",
    "PIL",
    "datasets",
    "webdataset",
    "torchdata",
    "lightning",
    "pytorch_lightning",
    "transformers",
    "accelerate",
    "hypothesis",
    "scipy",
    "pandas",
]


def test_core_modules_import_only_torch_numpy_and_the_standard_library_at_module_level():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.stem if path.parent == PACKAGE else part_of(module_name(path, PACKAGE))
        if part not in CORE:
            continue
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports serve extras
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [
                f"{path.relative_to(PACKAGE)}:{node.lineno} {n}" for n in names if n.split(".")[0] not in CORE_ALLOWED
            ]
    assert wrong == []


def test_the_core_runs_with_every_extra_missing():
    core = [f"midas_data.{name}" for name in CORE if name != "__init__"] + ["midas_data"]
    script = textwrap.dedent(
        f"""
        import sys
        for name in {EXTRAS!r}:
            sys.modules[name] = None  # import fails as if not installed
        import importlib
        import torch
        for name in {core!r}:
            importlib.import_module(name)
        import midas_data
        dataset = [{{"a": torch.randn(3), "b": torch.randn(2), "label": i % 3}} for i in range(12)]
        loader = midas_data.midas_loader(dataset, ("a", "b"), batch_size=6)
        batch = next(iter(loader))
        model = midas_data.LateFusionClassifier({{"a": torch.nn.Linear(3, 4), "b": torch.nn.Linear(2, 4)}},
                                                {{"a": 4, "b": 4}}, 3)
        objective = midas_data.MidasObjective(3, ("a", "b"))
        loss, info = objective(model(batch.inputs), batch, fuse=model.fuse)
        loss.backward()
        table = midas_data.StatsTable(12, ("a", "b"))
        table.update(batch.ids, info["per_sample"])
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
