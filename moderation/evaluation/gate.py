"""The promotion gate: a candidate (policy version, model digests) against the live version.

``backfill`` and ``rescan`` call :func:`check_gate` before they write anything. When the policy
has a live version in the lake and the candidate differs from it (another version, or a model
whose digest changed), the newest ``eval/results`` of both on each gate dataset are compared per
category, overall and per slice: a drop beyond the configured tolerance (conf/eval/gate.yaml)
blocks the run unless ``--force`` is given. A candidate (or live version) with no evaluation on
a gate dataset is blocked too, with the ``moderation evaluate`` command that fixes it. The
outcome lands in the run's ``runs`` row (``gate_status``, ``gate_detail``; a blocked run gets a
row of status ``blocked``, an override ``forced = true``).

Statuses: ``passed``, ``blocked``, ``overridden`` (blocked, then forced), ``not_required`` (the
candidate decides every category like the live version, or there is no live version),
``not_configured`` (nothing could be compared: no gate dataset labels a changed category, and
the gate config does not require one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderation.config import LoadedPolicy, ModelSpec, default_conf_dir, load_policy
from moderation.errors import ConfigError, ModerationError
from moderation.evaluation.datasets import dataset_names
from moderation.storage.lake import Lake

log = logging.getLogger(__name__)

GATE_METRICS = ("pr_auc", "roc_auc", "precision", "recall", "f1", "recall_at_precision")


class GateConfig(BaseModel):
    """conf/eval/gate.yaml."""

    model_config = ConfigDict(extra="forbid")

    #: Evaluation datasets the candidate is compared on (those absent from the lake are skipped).
    datasets: list[str] = Field(min_length=1)
    #: Largest allowed drop (live - candidate) per metric on all examples of a category.
    tolerance: dict[str, float]
    #: Largest allowed drop per metric on one slice (smaller samples: usually looser).
    slice_tolerance: dict[str, float] = {}
    #: Slices with fewer examples are not compared.
    min_slice_examples: int = Field(default=50, ge=1)
    #: Block when no gate dataset exists in the lake (default: record not_configured and go on).
    required: bool = False

    def model_post_init(self, _ctx) -> None:
        for name in (*self.tolerance, *self.slice_tolerance):
            if name not in GATE_METRICS:
                raise ValueError(f"unknown metric {name!r}; gate metrics: {list(GATE_METRICS)}")


def load_gate_config(path: Path | None = None) -> GateConfig:
    path = path or default_conf_dir() / "eval" / "gate.yaml"
    try:
        data = yaml.safe_load(Path(path).read_text())
        return GateConfig.model_validate(data)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: gate config not found") from e
    except (yaml.YAMLError, ValidationError, ValueError) as e:
        raise ConfigError(f"{path}: invalid gate config: {e}") from e


@dataclass
class Drop:
    dataset: str
    category: str
    slice: str  # "all" or "<column>=<value>"
    metric: str
    live: float
    candidate: float
    tolerance: float

    def format(self) -> str:
        return (f"{self.dataset} {self.category} [{self.slice}] {self.metric}: live {self.live:.3f} -> candidate "
                f"{self.candidate:.3f} (drop {self.live - self.candidate:.3f} > tolerance {self.tolerance:.3f})")


@dataclass
class GateResult:
    status: str
    live_version: int | None = None
    compared: list[str] = field(default_factory=list)  # "<dataset> v<n> <category>: <model> vs <model>"
    drops: list[Drop] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the evaluate commands that would fill the gap
    reasons: list[str] = field(default_factory=list)  # other reasons that block
    notes: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # categories the candidate decides differently

    @property
    def blocking(self) -> bool:
        return bool(self.drops or self.missing or self.reasons)

    def detail(self) -> str:
        return json.dumps({
            "live_version": self.live_version, "changed": self.changed, "compared": self.compared,
            "drops": [d.__dict__ for d in self.drops], "missing": self.missing, "reasons": self.reasons,
            "notes": self.notes,
        }, sort_keys=True)

    def message(self) -> str:
        lines = [f"evaluation gate: {self.status}" + (f" (live version v{self.live_version})"
                                                        if self.live_version is not None else "")]
        lines += [f"  below tolerance: {d.format()}" for d in self.drops]
        lines += [f"  not evaluated: {m}" for m in self.missing]
        lines += [f"  blocked: {r}" for r in self.reasons]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


class GateBlocked(ModerationError):
    """The candidate is worse than the live version beyond tolerance, or was not evaluated."""


def policy_file(loaded: LoadedPolicy, version: int) -> Path | None:
    """The file of ``version`` of the same policy beside ``loaded``."""
    if loaded.policy.version == version:
        return Path(loaded.path)
    for path in sorted(Path(loaded.path).parent.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if (isinstance(data, dict) and data.get("policy_id") == loaded.policy.policy_id
                and data.get("version") == version):
            return path
    return None


def _model_for(policy: LoadedPolicy, registry: dict[str, ModelSpec], category: str, modality: str) -> ModelSpec | None:
    """The policy's model scoring ``category`` in ``modality`` (the first one, if several)."""
    for mid in policy.policy.models:
        spec = registry[mid]
        if spec.modality == modality and category in spec.categories:
            return spec
    return None


def live_digests(lake: Lake, live: LoadedPolicy, registry: dict[str, ModelSpec]) -> dict[str, str]:
    """model id -> the digest the live version scored with: that of its newest succeeded backfill
    or rescan, else the registry's current one (nothing was scored with it yet)."""
    from moderation.policy.lifecycle import policy_runs

    out = {m: registry[m].digest for m in live.policy.models}
    runs = policy_runs(lake, live.policy.policy_id)
    if runs.empty:
        return out
    used = runs[runs["kind"].isin(["backfill", "rescan"]) & (runs["status"] == "succeeded")
                & (runs["policy_version"] == live.policy.version)]
    if not used.empty:
        row = used.iloc[-1]
        out.update(dict(zip(row["model_ids"] or [], row["model_digests"] or [], strict=True)))
    return out


def _rules(policy: LoadedPolicy, category: str) -> str | None:
    """The category's rule in every market, for comparing two versions (None: not in it)."""
    if category not in policy.policy.categories:
        return None
    markets = sorted({m for m, cats in policy.policy.markets.items() if category in cats})
    rules = {m: (r.model_dump() if (r := policy.policy.rule_for(category, m)) else None) for m in ["*", *markets]}
    exempt = category in policy.policy.exemptions.explicit
    return json.dumps({"rules": rules, "explicit_exempt": exempt}, sort_keys=True, default=str)


def _results_for(results: pd.DataFrame, digest: str, policy: LoadedPolicy, dataset: str,
                 version: int) -> pd.DataFrame:
    """The rows of one key in ``latest_results`` (which keeps the newest evaluation per key)."""
    if results.empty:
        return results
    return results[(results["model_digest"] == digest) & (results["dataset"] == dataset)
                   & (results["dataset_version"] == version) & (results["policy_hash"] == policy.content_hash)]


def _evaluate_command(lake: Lake, model_id: str, dataset: str, policy: LoadedPolicy) -> str:
    return f"moderation evaluate --lake {lake.root} --model {model_id} --dataset {dataset} --policy {policy.path}"


def _compare(result: GateResult, config: GateConfig, dataset: str, category: str, live: pd.DataFrame,
             cand: pd.DataFrame) -> None:
    def key(df: pd.DataFrame) -> pd.DataFrame:
        df = df[df["category"] == category]
        return df.assign(_slice=[("all" if pd.isna(c) else f"{c}={v}")
                                 for c, v in zip(df["slice_column"], df["slice_value"], strict=True)])
    merged = key(live).merge(key(cand), on="_slice", suffixes=("_live", "_cand"))
    for _, r in merged.iterrows():
        overall = r["_slice"] == "all"
        if not overall and min(r["n_live"], r["n_cand"]) < config.min_slice_examples:
            continue
        for metric, tol in (config.tolerance if overall else config.slice_tolerance).items():
            a, b = r[f"{metric}_live"], r[f"{metric}_cand"]
            if pd.isna(a) or pd.isna(b):
                continue
            if metric == "recall_at_precision" and r["target_precision_live"] != r["target_precision_cand"]:
                continue
            if a - b > tol + 1e-12:
                result.drops.append(Drop(dataset, category, r["_slice"], metric, float(a), float(b), tol))


def check_gate(lake: Lake, candidate: LoadedPolicy, registry: dict[str, ModelSpec], *,
               config: GateConfig | None = None, config_path: Path | None = None) -> GateResult:
    """Compare ``candidate`` with the policy's live version on the gate datasets (no side effect).

    What differs from the live version: each category whose rule (any market, the explicit
    exemption) differs, that the live version lacks, or whose model's digest differs from the
    one the live version scored with (its newest succeeded backfill / rescan). Each such category
    must be compared on a gate dataset that labels it; one that cannot be is listed in the notes
    (and blocks when the gate config says ``required``)."""
    from moderation.policy.lifecycle import declared_statuses, live_version

    policy_id = candidate.policy.policy_id
    live_v = live_version(lake, policy_id, declared_statuses(candidate))
    if live_v is None:
        return GateResult("not_required", notes=["the policy has no live version: nothing to compare with"])
    live_path = policy_file(candidate, live_v)
    if live_path is None:
        return GateResult("blocked", live_v, reasons=[
            f"the live version {policy_id} v{live_v} has no file beside {candidate.path}: keep the policy's versions "
            "in one folder to compare them, or --force"])
    try:
        live = load_policy(live_path, registry)
    except ModerationError as e:
        return GateResult("blocked", live_v, reasons=[f"the live version cannot be loaded to compare with ({e}); "
                                                      "--force to go on without the gate"])
    live_dig = live_digests(lake, live, registry)
    changed = []
    for category in candidate.policy.categories:
        rule_changed = _rules(candidate, category) != _rules(live, category)
        model_changed = False
        for modality in candidate.policy.categories[category].modalities:
            c_spec = _model_for(candidate, registry, category, modality)
            l_spec = _model_for(live, registry, category, modality) if category in live.policy.categories else None
            c_dig = c_spec.digest if c_spec else None
            l_dig = live_dig.get(l_spec.model_id) if l_spec else None
            model_changed |= c_dig != l_dig
        if rule_changed or model_changed:
            changed.append(category)
    if not changed:
        return GateResult("not_required", live_v, notes=["the candidate decides every category like the live version "
                                                         "(same rules, same model digests)"])
    config = config or load_gate_config(config_path)
    present = set(dataset_names(lake))
    datasets = [d for d in config.datasets if d in present]
    result = GateResult("passed", live_v, changed=changed)
    from moderation.evaluation.datasets import label_categories, read_dataset
    from moderation.evaluation.evaluate import latest_results

    results = latest_results(lake)
    attempted: set[str] = set()  # changed categories some gate dataset can compare
    for dataset in datasets:
        rows, version = read_dataset(lake, dataset)
        modalities = set(rows.column("modality").to_pylist())
        for category in label_categories(rows):
            if category not in changed:
                continue
            for modality in sorted(modalities & set(candidate.policy.categories[category].modalities)):
                c_spec = _model_for(candidate, registry, category, modality)
                l_spec = _model_for(live, registry, category, modality) if category in live.policy.categories else None
                if c_spec is None:
                    continue
                if l_spec is None:
                    result.notes.append(f"{dataset} {category}: the live version has no {modality} model for it: "
                                        f"nothing to compare {c_spec.model_id} with")
                    continue
                attempted.add(category)
                pair = []
                for model_id, digest, pol in ((l_spec.model_id, live_dig[l_spec.model_id], live),
                                              (c_spec.model_id, c_spec.digest, candidate)):
                    got = _results_for(results, digest, pol, dataset, version)
                    if got.empty or category not in set(got["category"]):
                        got = got.iloc[0:0]
                        if digest != registry[model_id].digest:
                            result.reasons.append(
                                f"{dataset} {category}: the live version scored with {model_id}@{digest[:12]}, "
                                "which the registry no longer holds and which was not evaluated on it: --force")
                        else:
                            cmd = _evaluate_command(lake, model_id, dataset, pol)
                            if cmd not in result.missing:
                                result.missing.append(cmd)
                    pair.append(got)
                if any(p.empty for p in pair):
                    continue
                live_ref = f"{l_spec.model_id}@{live_dig[l_spec.model_id][:12]}"
                result.compared.append(f"{dataset} v{version} {category}: {live_ref} (v{live.policy.version}) vs "
                                       f"{c_spec.ref} (v{candidate.policy.version})")
                _compare(result, config, dataset, category, pair[0], pair[1])
    uncompared = [c for c in changed if c not in attempted]
    if uncompared:
        msg = (f"changed but not compared: {', '.join(uncompared)} (no gate dataset in "
               f"{lake.uri('eval/datasets')} labels it; gate datasets: {', '.join(config.datasets)}; "
               "`moderation eval import-standard` / `moderation eval import`)")
        (result.reasons if config.required else result.notes).append(msg)
    if result.blocking:
        result.status = "blocked"
    elif not result.compared:
        result.status = "not_configured"
    return result


def gate_run_fields(result: GateResult, *, force: bool) -> dict:
    """The runs columns recording the gate's outcome for a run that goes on."""
    status = "overridden" if result.status == "blocked" and force else result.status
    out: dict[str, str | bool] = {"gate_status": status, "gate_detail": result.detail()}
    if status == "overridden":
        out["forced"] = True
    return out
