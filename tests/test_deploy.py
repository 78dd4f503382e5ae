"""deploy/ and the cluster run profile cannot drift from the code: every command line in the
manifests, the image, the spark-submit example and the Deployment page (docs/deployment.md) parses with
the CLI's own parser (and names files that exist); the KubeRay cluster is the shape
conf/jobs/cluster.yaml is sized for; the ray job submit runtime env leaves nothing needed behind."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from moderation.cli import app
from moderation.config import default_conf_dir, load_run_profile
from moderation.engines.ray import plan_placement
from moderation.errors import ModerationError

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CLUSTER_PROFILE = default_conf_dir() / "jobs" / "cluster.yaml"
KUBERAY = sorted((DEPLOY / "kuberay").glob("*.yaml"))
#: where deploy/Dockerfile puts the repository
IMAGE_ROOT = "/app/"
SHELL_OPERATORS = {"&&", "||", ";", "|"}
JOB_FILES = {"jobs/backfill.py": ["backfill"], "jobs/report.py": ["report"]}


def ray_pin() -> str:
    (line,) = [x for x in (REPO / "scripts" / "constraints.txt").read_text().splitlines() if x.startswith("ray==")]
    return line.split("==")[1]


# --------------------------------------------------------------------------------------------
# Finding the command lines
# --------------------------------------------------------------------------------------------


def invocations(command_line: str) -> list[list[str]]:
    """The CLI argvs (without the program) in one shell command line: ``moderation …`` in
    command position, ``python -m moderation …``, and ``jobs/backfill.py`` / ``jobs/report.py``
    (as the commands they are), each up to the next shell operator."""
    tokens = shlex.split(command_line, comments=True)
    found = []
    for i, token in enumerate(tokens):
        prefix = None
        if token == "moderation" and (i == 0 or tokens[i - 1] in SHELL_OPERATORS | {"exec", "RUN"}):
            prefix = []
        elif token == "moderation" and i > 0 and tokens[i - 1] == "-m":
            prefix = []
        elif token in JOB_FILES or any(token.endswith("/" + job) for job in JOB_FILES):
            prefix = JOB_FILES[next(job for job in JOB_FILES if token.endswith(job))]
        if prefix is None:
            continue
        args = []
        for arg in tokens[i + 1:]:
            if arg in SHELL_OPERATORS:
                break
            args.append(arg)
        if prefix or args:  # a lone word "moderation" (a name, e.g. a service account) runs nothing
            found.append(prefix + args)
    return found


def _shell_lines(text: str) -> list[str]:
    """Logical lines of a shell script or Dockerfile (backslash continuations joined)."""
    return text.replace("\\\n", " ").splitlines()


def _yaml_strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _yaml_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _yaml_strings(v)]
    return []


def deployment_page_blocks() -> list[str]:
    text = (REPO / "docs" / "deployment.md").read_text()
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) for every CLI invocation in deploy/ and on the Deployment page."""
    out = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        where = str(path.relative_to(REPO))
        if path.suffix in (".yaml", ".yml"):
            lines = [s for doc in yaml.safe_load_all(path.read_text()) for s in _yaml_strings(doc)]
            lines = [line for s in lines for line in _shell_lines(s)]
        else:
            lines = _shell_lines(path.read_text())
            if path.name == "Dockerfile":
                lines = [line.removeprefix("RUN ") for line in lines if line.startswith("RUN ")]
        out += [(where, argv) for line in lines for argv in invocations(line)]
    for block in deployment_page_blocks():
        out += [("docs/deployment.md", argv) for line in _shell_lines(block) for argv in invocations(line)]
    return out


def parse(argv: list[str]) -> tuple[tuple[str, ...], dict]:
    """Resolve the (sub)command and parse its options exactly as the CLI does: (path, params)."""
    command = typer.main.get_command(app)
    path = []
    while hasattr(command, "commands"):
        assert argv, f"{path}: no subcommand"
        name, argv = argv[0], argv[1:]
        assert name in command.commands, f"unknown command {' '.join(path + [name])}"
        command = command.commands[name]
        path.append(name)
    ctx = command.make_context(" ".join(path), list(argv))
    return tuple(path), ctx.params


def test_the_invocation_finder():
    assert invocations("python -m moderation backfill --lake x && python -m moderation decide --lake x") == [
        ["backfill", "--lake", "x"], ["decide", "--lake", "x"]]
    assert invocations("spark-submit --master local jobs/report.py --lake 's3://b/l'") == [["report", "--lake", "s3://b/l"]]
    # a URI or a comment that mentions the CLI is not an invocation
    assert invocations("echo s3://bucket/moderation --lake x  # moderation backfill") == []
    assert invocations("moderation") == []


def test_every_command_line_in_deploy_parses_with_the_cli():
    lines = command_lines()
    found = {(where, parse(argv)[0]) for where, argv in lines}
    # Each file's invocations are found (a finder that finds nothing would pass vacuously).
    assert found == {
        ("deploy/Dockerfile", ("models", "verify")),
        ("deploy/kuberay/backfill-rayjob.yaml", ("backfill",)),
        ("deploy/kuberay/rescan-raycronjob.yaml", ("rescan",)),
        ("deploy/spark/submit-report.sh", ("report",)),
        ("docs/deployment.md", ("backfill",)),
        ("docs/deployment.md", ("runs", "list")),
    }, found
    for where, argv in lines:
        _, params = parse(argv)
        for name in ("policy", "profile"):
            value = params.get(name)
            if value is None:
                continue
            local = REPO / str(value).removeprefix(IMAGE_ROOT)
            assert local.is_file(), f"{where}: --{name} {value}: no {local.relative_to(REPO)} in the repository"


def test_a_drifted_command_line_fails_to_parse():
    with pytest.raises(Exception, match="No such option"):
        parse(["backfill", "--catalog", "x", "--lake", "x", "--policy", "x", "--gpus", "4"])
    with pytest.raises(Exception, match="Missing parameter: lake"):
        parse(["rescan", "--catalog", "x", "--policy", "x"])


def test_deploy_runs_the_cli_not_another_entrypoint():
    for manifest in KUBERAY:
        doc = yaml.safe_load(manifest.read_text())
        spec = doc["spec"].get("jobTemplate", doc["spec"])
        assert spec["entrypoint"].startswith("python -m moderation "), manifest.name


# --------------------------------------------------------------------------------------------
# The cluster: manifests, run profile, placement
# --------------------------------------------------------------------------------------------


def _cluster_spec(manifest: Path) -> dict:
    doc = yaml.safe_load(manifest.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    return spec["rayClusterSpec"]


@pytest.mark.parametrize("manifest", KUBERAY, ids=lambda p: p.name)
def test_kuberay_cluster_is_the_shape_the_cluster_profile_is_sized_for(manifest):
    profile = load_run_profile(CLUSTER_PROFILE)
    cluster = _cluster_spec(manifest)
    assert cluster["rayVersion"] == ray_pin()
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu, cpu = groups["gpu-workers"], groups["cpu-workers"]
    # One actor per GPU: as many actors as GPU nodes, each holding all of its node's CPUs.
    assert gpu["replicas"] == gpu["minReplicas"] == profile.actors
    assert gpu["rayStartParams"] == {"num-cpus": str(int(profile.actor_num_cpus)), "num-gpus": "1"}
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    vcpus = int(container["resources"]["limits"]["cpu"])
    assert profile.torch_threads == vcpus - int(profile.actor_num_cpus)
    # What Ray sees once every group is up (the head offers no CPU).
    resources = {"CPU": sum(int(g["rayStartParams"]["num-cpus"]) * g["replicas"] for g in groups.values()),
                 "GPU": gpu["replicas"]}
    placement = plan_placement(profile, resources)
    assert (placement.device, placement.actors, placement.num_cpus, placement.num_gpus) == ("cuda", 4, 2.0, 1.0)
    cpu_only = plan_placement(profile, resources, uses_gpu=False)  # PDQ, the lexical baseline
    assert (cpu_only.device, cpu_only.actors, cpu_only.num_cpus) == ("cpu", 4, 2.0)
    assert int(cpu["rayStartParams"]["num-cpus"]) * cpu["replicas"] == resources["CPU"] - profile.actors * 2
    for group in [cluster["headGroupSpec"], *groups.values()]:
        for c in group["template"]["spec"]["containers"]:
            assert c["image"].endswith(f":{ray_pin()}-cuda"), c["image"]
            assert not any("AWS_SECRET" in str(e) for e in c.get("env", []))


def test_cluster_profile_on_more_gpus_keeps_one_actor_per_gpu_up_to_actors():
    profile = load_run_profile(CLUSTER_PROFILE)
    assert plan_placement(profile, {"CPU": 100, "GPU": 2}).actors == 2
    assert plan_placement(profile, {"CPU": 100, "GPU": 8}).actors == profile.actors == 4
    # Without GPUs (gpu: auto) the same profile runs CPU actors, never reserving every CPU.
    on_cpu = plan_placement(profile, {"CPU": 8})
    assert on_cpu.device == "cpu" and on_cpu.actors * on_cpu.num_cpus <= 7


@pytest.mark.parametrize("command", ["backfill", "rescan"])
def test_profile_flag_selects_the_cluster_profile(command, tmp_path, monkeypatch):
    """--profile reaches the run and is the profile it runs with (stopped right after loading it)."""
    from typer.testing import CliRunner

    import moderation.scoring.run

    class Loaded(ModerationError):
        pass

    real = moderation.scoring.run.load_run_profile
    seen = []

    def load(path=None):
        seen.append((path, real(path)))
        raise Loaded("profile loaded")

    monkeypatch.setattr(moderation.scoring.run, "load_run_profile", load)
    r = CliRunner().invoke(app, [command, "--catalog", str(tmp_path / "catalog"), "--lake", str(tmp_path / "lake"),
                                 "--policy", str(default_conf_dir() / "policies/catalog-safety/v1.yaml"),
                                 "--profile", str(CLUSTER_PROFILE)])
    assert r.exit_code == 2 and "profile loaded" in r.output, r.output
    ((path, profile),) = seen
    assert Path(path) == CLUSTER_PROFILE
    assert (profile.actors, profile.actor_num_cpus, profile.batch_size, profile.chunk_pairs) == (4, 2.0, 256, 100_000)


# --------------------------------------------------------------------------------------------
# ray job submit's runtime env, the image
# --------------------------------------------------------------------------------------------


def test_runtime_env_file_is_a_valid_ray_runtime_env_that_installs_nothing():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((DEPLOY / "ray" / "runtime-env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert set(env) <= {"excludes", "env_vars"}  # the working dir comes from --working-dir; deps from the image
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    for needed in ("moderation/", "conf/", "jobs/"):
        assert not any(needed.startswith(e.rstrip("/") + "/") or e.startswith(needed) for e in env["excludes"])


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_nothing_a_job_needs_is_git_ignored():
    """``ray job submit --working-dir .`` leaves out what .gitignore matches, tracked or not."""
    r = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard", "--", "moderation", "conf",
                        "jobs", "pyproject.toml"], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout == "", f"tracked but git-ignored, so never uploaded by ray job submit:\n{r.stdout}"


def test_dockerfile_builds_what_the_nodes_need():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^ARG BASE_IMAGE=rayproject/ray:{re.escape(ray_pin())}-py3\d+-cpu$", text, flags=re.M)
    assert "FROM ${BASE_IMAGE}" in text and "ARG TORCH_INDEX_URL=" in text
    install = next(line for line in _shell_lines(text) if "apt-get install" in line)
    for package in ("tesseract-ocr", "espeak-ng", "openjdk-17-jre-headless"):
        assert package in install.split()
    assert "-c scripts/constraints.txt -e ." in text  # the package itself, torch and Ray as pinned
    assert "RUN moderation models verify" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "demo-lake", "build"} <= set(ignored)
