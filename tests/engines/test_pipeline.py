"""Placement rules of the Ray adapter (no Ray needed)."""

from __future__ import annotations

import pytest

from moderation.config import RunProfile
from moderation.engines.ray import plan_placement


def test_cpu_actors_never_reserve_every_cpu():
    # ray-project/ray#44687: a pool holding every CPU starves the read tasks and hangs.
    p = plan_placement(RunProfile(actors=1, actor_num_cpus=2.0), {"CPU": 2.0})
    assert p.device == "cpu" and p.num_gpus == 0 and p.num_cpus <= 1.0
    p = plan_placement(RunProfile(actors=3, actor_num_cpus=1.0), {"CPU": 2.0})
    assert p.actors * p.num_cpus <= 1.0 + 1e-9
    p = plan_placement(RunProfile(actors=1, actor_num_cpus=1.0), {"CPU": 1.0})
    assert p.num_cpus < 1.0


def test_gpu_actors_when_cluster_has_gpus():
    p = plan_placement(RunProfile(actors=8, actor_num_cpus=2.0), {"CPU": 16.0, "GPU": 2.0})
    assert (p.device, p.actors, p.num_gpus) == ("cuda", 2, 1.0)
    assert plan_placement(RunProfile(gpu="never"), {"CPU": 16.0, "GPU": 2.0}).device == "cpu"
    with pytest.raises(RuntimeError, match="no GPU"):
        plan_placement(RunProfile(gpu="always"), {"CPU": 4.0})


def test_model_without_gpu_work_stays_on_cpu():
    p = plan_placement(RunProfile(actors=2, gpu="always"), {"CPU": 16.0, "GPU": 2.0}, uses_gpu=False)
    assert (p.device, p.num_gpus) == ("cpu", 0.0)
