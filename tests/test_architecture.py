"""Architecture rules, checked on the source (``ast``), not by running it (issue 18):

* ``moderation.storage.lake`` is the only module that writes Delta tables: no other module imports
  ``write_deltalake`` (or another delta-rs write entry point) or a private name of
  ``moderation.storage.lake``;
* every ``moderation`` import goes to the importing module's own layer or a lower one
  (docs/architecture.md), but for the exceptions listed in ``LAYER_EXCEPTIONS`` with why;
* every table the code names under the lake root is a key of the one schema map
  (``moderation.schemas.LAKE_SCHEMAS``: ``TABLE_SCHEMAS``, the reports and the catalog), and the
  data dictionary (``moderation tables``) describes every column of every one of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

import moderation
from moderation.errors import LakeError
from moderation.schemas import LAKE_SCHEMAS, REPORT_SCHEMAS, TABLE_SCHEMAS
from moderation.storage.lake import Lake

PACKAGE = Path(moderation.__file__).parent
LAKE_MODULE = PACKAGE / "storage/lake.py"
#: delta-rs' write entry points: only moderation.storage.lake calls them.
WRITERS = {"write_deltalake", "convert_to_deltalake"}
#: (module, name) pairs allowed anyway, with why.
ALLOWED = {
    # The re-scan planner writes each bucket of its local temporary spill (a scratch folder, never
    # a lake table) as a small Delta table to query it with DataFusion.
    ("scoring/rescan.py", "write_deltalake"),
}
#: Lake methods whose first argument is a table path under the lake root.
TABLE_METHODS = {"uri", "open", "exists", "read", "version", "transaction_version", "append_chunk", "append_files",
                 "write_data_file", "append", "overwrite", "rewrite", "replace_where", "merge", "write_comments",
                 "_create", "_create_empty", "_append"}
#: Evaluation datasets have one table per dataset, each with its own columns (no fixed schema).
DATASET_PREFIX = "eval/datasets"


def _modules() -> list[tuple[str, ast.Module]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 30, paths
    return [(str(p.relative_to(PACKAGE)), ast.parse(p.read_text(), filename=str(p))) for p in paths]


MODULES = _modules()


def _is_lake_module(node: ast.ImportFrom) -> bool:
    return (node.level == 0 and node.module == "moderation.storage.lake") or (node.level > 0 and node.module == "lake")


def test_only_lake_writes_delta_tables():
    offences = []
    for name, tree in MODULES:
        if name == "storage/lake.py":
            continue
        # Names bound to the moderation.storage.lake module (``import moderation.storage.lake as lake``,
        # ``from moderation import lake``), whose private attributes are off limits too.
        lake_aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name in WRITERS and (name, alias.name) not in ALLOWED:
                        offences.append(f"{name}:{node.lineno}: imports {alias.name}")
                    if _is_lake_module(node) and alias.name.startswith("_"):
                        offences.append(f"{name}:{node.lineno}: imports moderation.storage.lake.{alias.name}")
                    if node.module == "moderation.storage" and alias.name == "lake":
                        lake_aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "moderation.storage.lake" and alias.asname:
                        lake_aliases.add(alias.asname)
            elif isinstance(node, ast.Attribute):
                if node.attr in WRITERS and (name, node.attr) not in ALLOWED:
                    offences.append(f"{name}:{node.lineno}: uses .{node.attr}")
                if node.attr == "create_write_transaction":
                    offences.append(f"{name}:{node.lineno}: commits with create_write_transaction")
                if node.attr == "create" and isinstance(node.value, ast.Name) and node.value.id == "DeltaTable":
                    offences.append(f"{name}:{node.lineno}: creates a table with DeltaTable.create")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in lake_aliases):
                offences.append(f"{name}:{node.lineno}: uses moderation.storage.lake.{node.attr}")
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "lake"
                    and ast.unparse(node.value.value) == "moderation.storage"):
                offences.append(f"{name}:{node.lineno}: uses moderation.storage.lake.{node.attr}")
    assert not offences, "only moderation/storage/lake.py writes Delta tables (use the Lake API):\n" + "\n".join(offences)


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level string constants (``HASH_BANK_TABLE = "hash_bank"``)."""
    out = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            out[node.targets[0].id] = node.value.value
    return out


def _receiver(node: ast.expr) -> str:
    """A call's receiver as written: ``lake``, ``self.lake``, ``Lake(...)``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_receiver(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _receiver(node.func) + "(...)"
    return ""


def _table_names() -> dict[str, list[str]]:
    """Every table path the code names under a lake root, with where: the first argument of a
    Lake method (a literal, or a module constant; on a receiver named like a lake, or ``self``
    inside lake.py) and ``reporting._overwrite``'s ``reports/<name>``."""
    imported: dict[str, str] = {}
    for _, tree in MODULES:
        imported.update(_constants(tree))
    found: dict[str, list[str]] = {}
    for name, tree in MODULES:
        consts = {**imported, **_constants(tree)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func, args = node.func, node.args
            table = None
            if isinstance(func, ast.Attribute) and func.attr in TABLE_METHODS:
                receiver = _receiver(func.value).lower()
                if "lake" in receiver.split(".")[-1] or (name == "storage/lake.py" and receiver == "self"):
                    table = args[0]
            elif isinstance(func, ast.Name) and func.id == "_overwrite" and name == "reporting/report.py" and len(args) > 1:
                if isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
                    found.setdefault(f"reports/{args[1].value}", []).append(f"{name}:{node.lineno}")
                continue
            if table is None:
                continue
            if isinstance(table, ast.Constant) and isinstance(table.value, str):
                value = table.value
            elif isinstance(table, ast.Name) and table.id in consts:
                value = consts[table.id]
            else:
                continue  # a variable: its values are literals checked where they are written
            found.setdefault(value, []).append(f"{name}:{node.lineno}")
    return found


def test_every_table_the_code_names_is_in_the_schema_map():
    found = _table_names()
    # The scan sees the tables (a broken scan would pass vacuously).
    assert {"scores", "violations", "runs", "enforcement", "hash_bank", "reports/snapshot", "catalog"} <= set(found)
    unknown = {t: where for t, where in found.items()
               if t not in LAKE_SCHEMAS and t != DATASET_PREFIX and not t.startswith(DATASET_PREFIX + "/")}
    assert not unknown, f"tables without an entry in moderation.schemas (TABLE_SCHEMAS or REPORT_SCHEMAS): {unknown}"


def test_one_schema_map():
    assert set(TABLE_SCHEMAS) | set(REPORT_SCHEMAS) <= set(LAKE_SCHEMAS)
    assert "hash_bank" in TABLE_SCHEMAS
    from moderation.reporting.report import ANALYST_SCHEMAS

    assert all(REPORT_SCHEMAS[f"reports/{n}"] is s for n, s in ANALYST_SCHEMAS.items())


def test_a_write_to_a_table_outside_the_map_fails(tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="not a lake table"):
        lake.append_chunk("scorez", pa.table({"item_id": ["a"]}), app_id="a", version=0)
    assert not (tmp_path / "lake" / "scorez").exists()


def test_the_data_dictionary_covers_every_table(tmp_path: Path):
    from deltalake import DeltaTable
    from typer.testing import CliRunner

    from moderation.cli import app

    root = tmp_path / "lake"
    for table, schema in LAKE_SCHEMAS.items():
        DeltaTable.create(str(root / table), schema=schema)
    result = CliRunner().invoke(app, ["tables", "--lake", str(root), "--json"])
    assert result.exit_code == 0, result.output
    import json

    described = {t["name"]: t for t in json.loads(result.stdout)}
    assert set(described) == set(LAKE_SCHEMAS)
    missing = [f"{t}.{c['name']}" for t, info in described.items() for c in info["columns"] if not c["description"]]
    assert not missing, f"columns the data dictionary does not describe: {missing}"
    assert all([c["name"] for c in described[t]["columns"]] == LAKE_SCHEMAS[t].names for t in LAKE_SCHEMAS)


#: The layers, lowest first (docs/architecture.md): a module may import its own layer and lower ones.
LAYERS = ("core", "storage", "classifiers", "engines", "policy", "evaluation", "scoring", "apps")
#: Folder (or top-level module) -> layer; any other top-level module is core.
LAYER_OF = {
    "storage": "storage", "runs": "storage", "classifiers": "classifiers", "engines": "engines", "policy": "policy",
    "evaluation": "evaluation", "scoring": "scoring", "reporting": "apps", "demo": "apps", "bench": "apps",
    "cli": "apps", "__main__": "apps",
    # The kind -> class table: names only (the implementations are imported by name when built),
    # read by config to check each registry entry's kind.
    "classifiers.registry": "core",
}
#: (importing module, imported module) pairs that cross the layers upward, with why.
LAYER_EXCEPTIONS = {
    # The Ray pass is the executor of a scoring plan: its write tasks run the scoring layer's
    # chunk writer on the workers and its reads apply the plan's selection.
    ("moderation.engines.ray", "moderation.scoring.chunks"),
    ("moderation.engines.ray", "moderation.scoring.selection"),
    # Derived artifacts: the open_nsfw weights are converted from the packaged ONNX graph when first
    # resolved (a pure converter that imports nothing of moderation).
    ("moderation.storage.artifacts", "moderation.classifiers.onnx_graph"),
}


def _layer(module: str) -> str:
    parts = module.split(".")[1:]
    for key in (".".join(parts[:2]), parts[0] if parts else ""):
        if key in LAYER_OF:
            return LAYER_OF[key]
    return "core"


def _imports(path: Path):
    """(line, imported moderation module) of every import outside ``if TYPE_CHECKING:``, at
    module level or inside a function (a lazy import is a dependency all the same)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "moderation":
            for alias in node.names:  # ``from moderation.x import y``: y may be a module
                sub = f"{node.module}.{alias.name}"
                yield node.lineno, sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "moderation")


def test_imports_follow_the_layers():
    offences, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for line, target in _imports(path):
            if LAYERS.index(_layer(target)) <= LAYERS.index(_layer(module)):
                continue
            if (module, target) in LAYER_EXCEPTIONS:
                used.add((module, target))
                continue
            offences.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {_layer(module)} imports "
                            f"{_layer(target)} ({target})")
    assert not offences, "imports that go up the layers (docs/architecture.md):\n" + "\n".join(offences)
    assert used == LAYER_EXCEPTIONS, f"exceptions no longer needed: {sorted(LAYER_EXCEPTIONS - used)}"


def test_the_layer_check_sees_an_upward_import(tmp_path: Path):
    """The checker itself: a policy module importing the scoring layer is found."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from moderation.scoring.run import execute\n")
    (line, target), = list(_imports(bad))
    assert line == 2 and target == "moderation.scoring.run"
    assert LAYERS.index(_layer(target)) > LAYERS.index(_layer("moderation.policy.decide"))
