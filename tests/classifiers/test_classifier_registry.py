"""The classifier registry (moderation/classifiers/registry.py: kind -> class) and the modality
table (moderation/modalities.py: modality -> catalog columns): every kind builds, an unknown
kind is refused on load naming the file, field and value, every modality has a classifier and
a column, and ``classifiers.base`` imports no implementation."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from moderation.classifiers import registry
from moderation.classifiers.base import Classifier, build_classifier
from moderation.config import ModelSpec, default_conf_dir, load_model_registry, load_model_spec
from moderation.errors import ConfigError
from moderation.modalities import MEDIA_COLUMNS, MODALITIES, MODALITY_COLUMNS, MODALITY_INPUTS, Modality, media_column

ROOT = Path(__file__).resolve().parent.parent.parent
MODELS_DIR = default_conf_dir() / "models"
#: The modules that implement a kind (imported only when one is built).
IMPLEMENTATIONS = sorted({e.module for e in registry.KINDS.values()})


@pytest.fixture
def unregistered(monkeypatch):
    """A process where nothing registered the benchmark kind (whatever other tests did)."""
    monkeypatch.setattr(registry, "_REGISTERED_KINDS", set())


def _shipped() -> dict[str, ModelSpec]:
    return load_model_registry(MODELS_DIR)


@pytest.mark.parametrize("kind", list(registry.KINDS))
def test_every_kind_builds_from_its_registry_entry(kind, monkeypatch):
    entry = registry.KINDS[kind]
    cls = registry.classifier_class(kind)
    assert issubclass(cls, Classifier) and cls.__name__ == entry.name
    if entry.benchmark_only:
        # Not in conf/: built from an entry of its own, once the process registered it.
        assert all(s.kind != kind for s in _shipped().values())
        monkeypatch.setattr(registry, "_REGISTERED_KINDS", {kind})
        specs = [ModelSpec.model_validate({
            "model_id": "bench-null-v1", "modality": cls.modality, "kind": kind, "categories": ["hate"],
            "artifacts": {"none": {"uri": "package://moderation/artifacts/none.json", "sha256": "0" * 64}}})]
    else:
        specs = [s for s in _shipped().values() if s.kind == kind]
        assert specs, f"kind {kind!r} is registered but no conf/models entry names it"
    for spec in specs:
        clf = build_classifier(spec, batch_size=8)  # construction only: nothing loaded
        assert type(clf) is cls
        assert clf.modality == spec.modality
        assert clf.batch_size == 8


def test_shipped_entries_name_registered_kinds():
    assert {s.kind for s in _shipped().values()} <= set(registry.PRODUCTION_KINDS)


def test_unknown_kind_is_refused_naming_file_field_and_value(tmp_path):
    data = yaml.safe_load((MODELS_DIR / "text-minilm-heads-v1.yaml").read_text())
    data["kind"] = "minilm_headz"
    path = tmp_path / "models" / "text-minilm-heads-v1.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_model_spec(path)
    msg = str(e.value)
    assert str(path) in msg and "field 'kind'" in msg and "'minilm_headz'" in msg
    assert "unknown kind" in msg and all(k in msg for k in registry.PRODUCTION_KINDS)
    with pytest.raises(ConfigError, match=r"text-minilm-heads-v1\.yaml: field 'kind'.*minilm_headz"):
        load_model_registry(path.parent)


def test_build_refuses_a_kind_without_classifier():
    spec = _shipped()["text-minilm-heads-v1"].model_copy(update={"kind": "no_such_kind"})  # bypasses validation
    with pytest.raises(ValueError, match="model text-minilm-heads-v1: no classifier for kind 'no_such_kind'"):
        build_classifier(spec)
    with pytest.raises(ValueError, match="no classifier"):
        registry.register_kind("no_such_kind")


def test_benchmark_kind_refused_unless_registered(tmp_path, unregistered):
    assert registry.BENCHMARK_KIND not in registry.PRODUCTION_KINDS
    with pytest.raises(ValueError, match="benchmark's zero-cost classifier.*scripts/bench_scale.py"):
        registry.check_kind(registry.BENCHMARK_KIND)
    from moderation.classifiers import benchmark

    benchmark.register()
    assert registry.check_kind(registry.BENCHMARK_KIND) == registry.BENCHMARK_KIND


def test_every_modality_has_a_column_and_a_classifier():
    from typing import get_args

    from moderation.schemas import CATALOG_SCHEMA, TEXT_COLUMNS
    from moderation.storage.catalog import WORK_COLUMNS, modality_mask

    assert set(MODALITIES) == set(get_args(Modality)) == set(MODALITY_COLUMNS)
    scored_by = {registry.classifier_class(k).modality for k in registry.PRODUCTION_KINDS}
    shipped = {s.modality for s in _shipped().values()}
    batch = pa.table({"item_id": ["a", "b"], **{c: pa.array(["x", None], pa.string())
                                              for c in CATALOG_SCHEMA.names if c != "item_id"
                                              and CATALOG_SCHEMA.field(c).type == pa.string()}})
    for modality, cols in MODALITY_COLUMNS.items():
        assert modality in scored_by, f"no registered classifier scores {modality}"
        assert modality in shipped, f"no conf/models entry scores {modality}"
        assert cols.inputs and all(c in CATALOG_SCHEMA.names and c in WORK_COLUMNS for c in cols.inputs)
        assert MODALITY_INPUTS[modality] == cols.inputs
        if cols.uri is None:  # every item is selected
            assert modality_mask(batch, modality) is None
            with pytest.raises(KeyError):
                media_column(modality)
        else:  # only items with a URI there
            assert cols.uri in cols.inputs and media_column(modality) == MEDIA_COLUMNS[modality] == cols.uri
            assert modality_mask(batch, modality).to_pylist() == [True, False]
    assert MODALITY_COLUMNS["text"].inputs == TEXT_COLUMNS


def test_classifiers_read_the_media_column_of_their_modality():
    """A media classifier's URIs come from its modality's column of the table."""
    for kind in registry.PRODUCTION_KINDS:
        cls = registry.classifier_class(kind)
        if cls.modality not in MEDIA_COLUMNS:
            continue
        spec = next(s for s in _shipped().values() if s.kind == kind)
        clf = build_classifier(spec)
        batch = pa.table({media_column(cls.modality): ["u1", None]})
        assert clf.media_uris(batch) == ["u1", None]


def test_base_imports_no_implementation():
    tree = ast.parse((ROOT / "moderation/classifiers/base.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not imported & set(IMPLEMENTATIONS), sorted(imported & set(IMPLEMENTATIONS))
    # And in a fresh process: importing base (or config, or the registry) loads none of them,
    # nor the engines.
    code = ("import json, sys; import moderation.classifiers.base, moderation.config, moderation.storage.media; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(IMPLEMENTATIONS), sorted(loaded & set(IMPLEMENTATIONS))
    assert not loaded & {"torch", "ray", "transformers"}


def test_load_cover_lives_in_media():
    """The bank and the image classifiers read covers through media.load_cover (no bank <->
    classifiers.image import cycle)."""
    import moderation.classifiers.image as image
    import moderation.storage.media as media

    assert image.load_cover is media.load_cover  # imported, not defined there
    assert not hasattr(image, "decode_image")
    for path in ("moderation/storage/bank.py", "moderation/classifiers/pdq.py", "moderation/classifiers/ocr.py"):
        tree = ast.parse((ROOT / path).read_text())
        froms = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert ("moderation.classifiers.image", "load_cover") not in names, path
        if path.endswith("storage/bank.py"):
            assert ("moderation.storage.media", "load_cover") in names and "moderation.classifiers.image" not in froms
    with pytest.raises(media.MediaError, match="image_missing: cover_image is null or empty"):
        media.load_cover(None, max_bytes=10, max_pixels=10)
