from __future__ import annotations

import shutil

from typer.testing import CliRunner

from moderation.cli import app
from moderation.config import default_conf_dir


def test_models_list_and_verify_pass_on_shipped_registry():
    r = CliRunner().invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "text-minilm-heads-v1" in r.output and "modality=text" in r.output
    r = CliRunner().invoke(app, ["models", "verify"])
    assert r.exit_code == 0 and "FAIL" not in r.output and r.output.count("OK ") >= 4


def test_models_verify_fails_on_a_tampered_digest(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), conf)
    entry = conf / "models" / "text-minilm-heads-v1.yaml"
    text = entry.read_text()
    heads_sha = text.split("heads:")[1].split("sha256: ")[1][:64]
    entry.write_text(text.replace(heads_sha, "0f" * 32))
    monkeypatch.setenv("MODERATION_CONF_DIR", str(conf))
    r = CliRunner().invoke(app, ["models", "verify"])
    assert r.exit_code == 1
    assert "FAIL  model text-minilm-heads-v1: artifact heads" in r.output and "refusing to load" in r.output
    r = CliRunner().invoke(app, ["models", "verify", "no-such-model"])
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.output


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
