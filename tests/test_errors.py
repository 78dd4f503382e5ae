"""A user's error raised inside Ray reaches the command line as that error: one line, its exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from moderation.errors import ArtifactError, LakeError, StorageError, moderation_cause


def test_a_cause_ray_kept_as_an_object_is_found():
    from ray.exceptions import RayTaskError

    original = ArtifactError("heads: digest mismatch", problem="digest mismatch")
    wrapped = RayTaskError("ScoreActor.__init__", "Traceback (most recent call last): ...", original)
    assert moderation_cause(wrapped) is original
    try:
        try:
            raise StorageError("lake: storage failed")
        except StorageError as e:
            raise RuntimeError("while committing") from e
    except RuntimeError as chained:
        assert isinstance(moderation_cause(chained), StorageError)


def test_a_cause_ray_kept_only_as_text_is_rebuilt():
    # What ActorDiedError says when an actor's constructor raised (Ray keeps the traceback's text).
    text = ("The actor died because of an error raised in its creation task, ray::MapWorker(ScoreActor).__init__()\n"
            "  File \"/x/moderation/storage/artifacts.py\", line 97, in read_artifact\n"
            "moderation.errors.ArtifactError: text-minilm-heads-v1: heads: digest mismatch, refusing to load\n")
    cause = moderation_cause(RuntimeError(text))
    assert type(cause) is ArtifactError and str(cause) == "text-minilm-heads-v1: heads: digest mismatch, refusing to load"
    assert type(moderation_cause(RuntimeError("lake.LakeError: runs: no such table"))) is LakeError
    # Not ours: a bug stays a bug (traceback, exit 1), never dressed up as a user error.
    assert moderation_cause(RuntimeError("ValueError: bad\nKeyError: x")) is None
    assert moderation_cause(ValueError("plain")) is None


@pytest.mark.parametrize("error, code", [("ArtifactError('tampered')", 2), ("StorageError('s3 down')", 3)])
def test_the_cli_prints_one_line_and_the_causes_exit_code(error, code):
    script = ("from ray.exceptions import RayTaskError\n"
              "from moderation import cli\n"
              "from moderation.errors import ArtifactError, StorageError\n"
              "def boom(*a, **k):\n"
              f"    raise RayTaskError('ScoreActor.__init__', 'Traceback ...', {error})\n"
              "cli.app = boom\n"
              "cli.main(['backfill'])\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == code, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
