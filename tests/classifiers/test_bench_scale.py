"""The scale benchmark's zero-cost classifier (moderation/classifiers/benchmark.py): refused by
every registry and policy load unless the process registered it, as scripts/bench_scale.py does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from moderation import config
from moderation.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def bench(monkeypatch):
    """scripts/bench_scale.py as a module."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "scripts/bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_scale", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def unregistered(monkeypatch):
    """A process where nothing registered extra kinds (whatever other tests did)."""
    from moderation.classifiers import registry

    monkeypatch.setattr(registry, "_REGISTERED_KINDS", set())


def test_benchmark_kind_refused_without_registration(tmp_path, bench, unregistered):
    bench.write_conf(tmp_path)
    with pytest.raises(ConfigError, match=r"bench-null-v1\.yaml: field 'kind'.*benchmark.*scripts/bench_scale\.py"):
        config.load_model_registry(tmp_path / "models")
    # The shipped registry never names it, and a policy naming it cannot load with that registry.
    registry = config.load_model_registry()
    assert all(s.kind != "benchmark_null" for s in registry.values())
    with pytest.raises(ConfigError, match="unknown model 'bench-null-v1'"):
        config.load_policy(tmp_path / "policies/bench-scale/v1.yaml", registry)


def test_benchmark_kind_accepted_after_register(tmp_path, bench, unregistered):
    from moderation.classifiers import benchmark
    from moderation.classifiers.base import build_classifier

    bench.write_conf(tmp_path)
    benchmark.register()
    registry = config.load_model_registry(tmp_path / "models")
    loaded = config.load_policy(tmp_path / "policies/bench-scale/v1.yaml", registry)
    clf = build_classifier(registry[loaded.policy.models[0]])
    assert isinstance(clf, benchmark.NullClassifier)
    clf.setup()
    batch = pa.table({"item_id": ["a", "b", "c"], "title": ["one song", "one song", " "],
                      "description": [None, None, None], "body_text": ["la la", "la la", None]})
    out = clf.process_batch(clf.prepare(batch))
    scores = out.column("category_scores").to_pylist()
    assert scores[0] == scores[1] and dict(scores[0]).keys() == {"hate", "harassment", "spam"}
    assert all(0 <= v < 1 for _, v in scores[0])
    assert out.column("qreason").to_pylist() == [None, None, "no_usable_text"]
    assert out.column("units_scored").to_pylist()[:2] == [4, 4]
    assert clf.content_hashes(batch) == out.column("content_hash").to_pylist()


def test_unknown_kind_lists_valid_ones(tmp_path, unregistered):
    path = tmp_path / "m.yaml"
    path.write_text("model_id: m\nmodality: text\nkind: nope\ncategories: [hate]\n"
                    f"artifacts:\n  a:\n    uri: /x.json\n    sha256: {'0' * 64}\n")
    with pytest.raises(ConfigError, match="unknown kind 'nope'; valid: minilm_heads"):
        config.load_model_spec(path)


def test_synthetic_catalog_is_a_valid_catalog(tmp_path, bench):
    """The benchmark's catalog writer follows the catalog schema as it grows (it once failed at the
    write when the schema gained show_id / album_id) and the catalog reads as a moderation catalog."""
    from moderation.storage.catalog import open_catalog

    bench.write_catalog(tmp_path / "catalog", 500, batch_rows=200)
    snapshot = open_catalog(str(tmp_path / "catalog"))
    rows = pa.concat_tables([t for f in snapshot.files for t in snapshot.read(f, snapshot.columns)])
    assert rows.num_rows == 500 and len(set(rows.column("item_id").to_pylist())) == 500
    types = rows.column("item_type").to_pylist()
    shows, albums = rows.column("show_id").to_pylist(), rows.column("album_id").to_pylist()
    assert all((s is not None) == (t == "episode") for s, t in zip(shows, types, strict=True))
    assert all((a is not None) == (t == "track") for a, t in zip(albums, types, strict=True))


def test_synthetic_roll_up_groups_grow_with_the_catalog(tmp_path, bench):
    """Creators (about 20 items each) are numbered across the whole catalog, not drawn again per
    batch from the same range, so the report's roll-ups grow with the catalog as a real one's do."""
    from moderation.storage.catalog import open_catalog

    creators = {}
    for items in (400, 4000):
        bench.write_catalog(tmp_path / f"c{items}", items, batch_rows=200)
        snapshot = open_catalog(str(tmp_path / f"c{items}"))
        rows = pa.concat_tables([t for f in snapshot.files for t in snapshot.read(f, snapshot.columns)])
        creators[items] = len(set(rows.column("creator_id").to_pylist()))
    assert 10 <= creators[400] <= 21 and 150 <= creators[4000] <= 201, creators
