"""Shared fixtures: real local Ray and Spark (session-scoped), tiny real Delta tables in tmp_path."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from moderation.config import default_conf_dir
from moderation.evaluation.sources import default_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Derived model artifacts (conf/models/*.yaml `convert:`) are cached in this session's own folder,
# not in the user's ~/.cache; Ray workers and subprocesses started by the tests inherit it.
if "MODERATION_ARTIFACT_CACHE" not in os.environ:
    os.environ["MODERATION_ARTIFACT_CACHE"] = _cache = tempfile.mkdtemp(prefix="moderation-artifacts-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

#: The suite runs on two pytest-xdist workers, a file at a time (``-n 2 --dist loadfile``, see
#: docs/development.md), and the files are handed out in collection order: the slowest first, so the workers
#: finish together instead of one starting the multi-node test as the other runs out of work.
#: Order only: every file runs, and a file not listed keeps its place after these.
SLOWEST_FILES = (
    "test_s3_backfill.py", "test_multinode.py", "test_backfill_integration.py", "test_text_classifier.py",
    "test_resume_faults.py", "test_rescan.py", "test_secrets.py", "test_concurrency.py", "test_reporting.py",
    "test_long_form.py", "test_audio_classifier.py", "test_multimodal_integration.py", "test_demo.py",
    "test_half_precision.py", "test_ray_address.py", "test_evaluation.py", "test_cascade.py",
    "test_catalog_formats.py", "test_security.py", "test_query.py", "test_lease.py", "test_long_text.py",
    "test_corpora.py", "test_spark_peer.py", "test_bad_catalog.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


POLICY_V1 = default_conf_dir() / "policies" / "catalog-safety" / "v1.yaml"
POLICY_V2 = default_conf_dir() / "policies" / "catalog-safety" / "v2.yaml"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    assert (d / "text").is_dir(), f"labelled data not found at {d}; set MODERATION_DATA_DIR"
    return d


@pytest.fixture(scope="session")
def text_classifier():
    """The real reference text classifier, loaded once (digest-checked)."""
    from moderation.classifiers.text import MiniLMHeadsClassifier
    from moderation.config import load_model_registry

    clf = MiniLMHeadsClassifier(load_model_registry()["text-minilm-heads-v1"])
    clf.setup("cpu")
    return clf


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # 2 logical CPUs like the CI machine; the pipeline must leave one free for reads.
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def spark():
    from moderation.engines.spark import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()
