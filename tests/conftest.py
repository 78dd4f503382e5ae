"""Shared fixtures: real local Ray and Spark (session-scoped), tiny real Delta tables in tmp_path."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from moderation.config import default_conf_dir
from moderation.datasets import default_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Derived model artifacts (conf/models/*.yaml `convert:`) are cached in this session's own folder,
# not in the user's ~/.cache; Ray workers and subprocesses started by the tests inherit it.
if "MODERATION_ARTIFACT_CACHE" not in os.environ:
    os.environ["MODERATION_ARTIFACT_CACHE"] = _cache = tempfile.mkdtemp(prefix="moderation-artifacts-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

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
    from moderation.reporting import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()
