from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moderation.config import load_model_registry, load_model_spec, load_policy, load_run_profile
from moderation.errors import ConfigError
from tests.conftest import POLICY_V1, POLICY_V2


def _write(tmp_path: Path, data: dict | str, name: str = "policy.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _policy_dict() -> dict:
    return yaml.safe_load(POLICY_V1.read_text())


def test_shipped_policies_load_and_differ():
    v1, v2 = load_policy(POLICY_V1), load_policy(POLICY_V2)
    assert (v1.policy.policy_id, v1.policy.version) == ("catalog-safety", 1)
    assert v2.policy.version == 2
    assert v1.content_hash != v2.content_hash
    thresholds = lambda p: {c: r.threshold for c, r in p.policy.categories.items()}  # noqa: E731
    assert thresholds(v1) != thresholds(v2)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["categories"]["hate"].update(threshold=1.5), "categories.hate.threshold"),
        (lambda d: d["categories"]["hate"].update(threshold="high"), "categories.hate.threshold"),
        (lambda d: d["categories"]["hate"].update(review_threshold=0.95), "categories.hate"),
        (lambda d: d["categories"]["hate"].update(action="ban_forever"), "categories.hate.action"),
        (lambda d: d["categories"].update(violence=d["categories"]["hate"]), "categories.violence"),
        (lambda d: d.update(models=["no-such-model"]), "models.0"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d["exemptions"].update(explicit=["sexual"]), "exemptions"),
        (lambda d: d["categories"]["spam"].update(modalities=["audio"]), "categories.spam.modalities"),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path, mutate, field):
    d = _policy_dict()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    msg = str(e.value)
    assert str(path) in msg
    assert f"field '{field}" in msg


def test_policy_not_yaml_or_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(_write(tmp_path, "categories: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_policy(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_policy(tmp_path / "nope.yaml")


def test_model_registry_digest_and_refusals(tmp_path):
    reg = load_model_registry()
    spec = reg["text-minilm-heads-v1"]
    assert spec.modality == "text" and set(spec.categories) == {"hate", "harassment", "spam"}
    assert len(spec.digest) == 64 and spec.ref.startswith("text-minilm-heads-v1@")
    d = yaml.safe_load((Path(__file__).parents[1] / "conf/models/text-minilm-heads-v1.yaml").read_text())
    d["artifacts"]["heads"]["uri"] = "weights/heads.pt"
    path = _write(tmp_path, d, "text-minilm-heads-v1.yaml")
    with pytest.raises(ConfigError, match="pickle-based"):
        load_model_spec(path)
    d["artifacts"]["heads"]["uri"] = "x.safetensors"
    with pytest.raises(ConfigError, match="must match the file name"):
        load_model_spec(_write(tmp_path, d, "other-name.yaml"))


def test_run_profile_rejects_unknown_keys(tmp_path):
    assert load_run_profile().actor_num_cpus < 2
    with pytest.raises(ConfigError, match="field 'num_actors'"):
        load_run_profile(_write(tmp_path, {"num_actors": 3}, "p.yaml"))


def test_run_profile_max_error_share(tmp_path):
    """Issue 15: the share of score_error pairs above which a scoring run fails."""
    conf = Path(__file__).parents[1] / "conf" / "jobs"
    assert load_run_profile().max_error_share == 0.01
    for name in ("local.yaml", "cluster.yaml"):
        assert load_run_profile(conf / name).max_error_share == 0.01
    assert load_run_profile(_write(tmp_path, {"max_error_share": 0}, "p.yaml")).max_error_share == 0
    for bad in (-0.1, 1.5, "some"):
        with pytest.raises(ConfigError, match="field 'max_error_share'"):
            load_run_profile(_write(tmp_path, {"max_error_share": bad}, "p.yaml"))


def test_commit_pairs_bounds_the_chunks_of_a_pass():
    from moderation.config import RunProfile, commit_pairs

    profile = RunProfile(chunk_pairs=500, max_chunks=200)
    assert commit_pairs(profile, 0) == commit_pairs(profile, 60) == commit_pairs(profile, 100_000) == 500
    assert commit_pairs(profile, 1_000_000) == 5_000  # 200 chunks
    assert commit_pairs(profile, 10_000_001) == 50_001  # never more than max_chunks chunks
    assert commit_pairs(RunProfile(chunk_pairs=64, max_chunks=2), 200) == 100


def test_file_pairs_follow_the_chunks_up_to_a_cap():
    from moderation.config import MAX_FILE_PAIRS, RunProfile, file_pairs

    profile = RunProfile(chunk_pairs=500, max_chunks=200)
    assert file_pairs(profile, 0) == file_pairs(profile, 100_000) == 500  # small passes: as before
    assert file_pairs(profile, 1_000_000) == 5_000  # a chunk a file
    assert file_pairs(profile, 10_000_000) == MAX_FILE_PAIRS == 50_000  # capped, so a chunk is one file
    assert file_pairs(profile, 100_000_000) == MAX_FILE_PAIRS  # and 10 files a chunk beyond
    assert file_pairs(RunProfile(chunk_pairs=100_000), 100_000_000) == 100_000  # never below chunk_pairs
