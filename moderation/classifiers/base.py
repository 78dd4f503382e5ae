"""The one small interface every classifier implements, whatever its modality.

The pipeline only knows this contract:

* ``__init__(spec)`` stores the (frozen, picklable) registry entry; cheap, no model loaded.
* ``preprocess(batch)`` runs in CPU tasks: turns (item, modality) work rows into model
  inputs, a ``content_hash`` and, for unusable input, a quarantine reason. Pure; no weights.
* ``setup(device)`` runs once per actor: verifies artifact digests and loads weights.
* ``score(batch)`` scores the preprocessed rows on the device and returns per-category
  probabilities with per-category evidence (which part of the input gave the score).

``process_batch`` wraps ``score`` so a failing batch is retried (with a backoff), then split in
halves down to single rows, and only the rows that still fail are quarantined (``score_error``,
with the attempts in its detail): nothing is dropped, no block is lost, and one bad row does not
quarantine its batch-mates. A re-scan retries ``score_error`` pairs (``RETRIED_REASONS``).
"""

from __future__ import annotations

import abc
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar, cast

import pyarrow as pa

# The kind -> class map lives in registry.py, which imports the implementations only when one
# is built; ``build_classifier`` is re-exported here for the callers that import it from base.
from moderation.classifiers.registry import build_classifier as build_classifier
from moderation.config import DEFAULT_MAX_ITEM_SECONDS, DEFAULT_MAX_ITEM_WORDS, ModelSpec
from moderation.modalities import Modality, media_column
from moderation.storage.media import MediaError

M = TypeVar("M")
V = TypeVar("V")

log = logging.getLogger(__name__)

#: Columns every preprocessed work row carries, whatever the modality.
QREASON = "qreason"  # null when the row can be scored, else a quarantine reason code
QDETAIL = "qdetail"
QSTAGE = "qstage"
CONTENT_HASH = "content_hash"

#: The work row columns ``process_batch`` passes on (the ``scores`` columns that come from the catalog).
RESULT_COLUMNS = ("item_id", "item_type", "language", "markets", "explicit", "creator_id", "show_id", "album_id")

#: What ``preprocess`` may add for ``scores``: how much of the item is scored (see
#: classifiers/windows.py; null where a classifier does not record it).
COVERAGE_COLUMNS = ("units_total", "units_scored", "unit", "coverage_reason")

#: Quarantine reason of a pair the model failed on (an exception from ``score``) after every retry.
SCORE_ERROR = "score_error"
#: Quarantine reasons that may pass on their own (a model failure, an OCR timeout, a media read
#: that failed with an I/O error) even though the input is unchanged: a re-scan selects such
#: pairs again. Every other reason is permanent for the same content (too large, empty, not
#: decodable, no usable text, bad ids): a re-scan retries them only when the content changes.
RETRIED_REASONS = frozenset({SCORE_ERROR, "ocr_failed", "image_unreadable", "audio_unreadable"})

SCORE_TYPE = pa.map_(pa.string(), pa.float32())
EVIDENCE_TYPE = pa.map_(pa.string(), pa.string())


def prepared(
    batch: pa.Table, *, hashes: list[str], inputs: dict[str, pa.Array],
    reasons: Sequence[str | None], details: Sequence[str | None], stages: Sequence[str | None],
) -> pa.Table:
    """``batch`` plus what every ``preprocess`` adds: the content hash, the model inputs, and
    the quarantine columns (null reason = scorable)."""
    out = batch.append_column(CONTENT_HASH, pa.array(hashes, pa.string()))
    for name, values in inputs.items():
        out = out.append_column(name, values)
    for name, values in ((QREASON, reasons), (QDETAIL, details), (QSTAGE, stages)):
        out = out.append_column(name, pa.array(values, pa.string()))
    return out


def media_content_hash(data: bytes | None, uri: str | None) -> str:
    """The content hash of a media pair: SHA-256 of its bytes when they could be read (within
    the size limit and the media roots, decodable or not), else of its URI. A re-scan compares
    it with the stored one to skip unchanged pairs (rescan.py computes it the same way, through
    ``Classifier.content_hashes``)."""
    return hashlib.sha256(data if data is not None else (uri or "").encode()).hexdigest()


@dataclass
class MediaInputs(Generic[V]):
    """Per work row of a media batch: what the classifier made of the media (None where the
    row is quarantined), its content hash and its quarantine columns."""

    values: list[V | None] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    details: list[str | None] = field(default_factory=list)
    stages: list[str | None] = field(default_factory=list)

    def prepared(self, batch: pa.Table, inputs: dict[str, pa.Array]) -> pa.Table:
        """``batch`` plus these rows' content hashes, ``inputs`` and quarantine columns."""
        return prepared(batch, hashes=self.hashes, inputs=inputs, reasons=self.reasons, details=self.details,
                        stages=self.stages)


def media_inputs(uris: Sequence[str | None], load: Callable[[str | None], tuple[bytes, M]],
                 use: Callable[[str, M], V]) -> MediaInputs[V]:
    """``use(uri, media)`` for each URI's ``load(uri) -> (bytes, media)`` (``load`` refuses a
    null or empty URI); a ``MediaError`` from either quarantines the row with its reason
    (detail cut at 500 characters, stage ``preprocess``). The content hash is that of the
    bytes when they were read (by ``load``, or carried by its error as ``MediaError.data``),
    else of the URI."""
    out: MediaInputs[V] = MediaInputs()
    for uri in uris:
        data = None
        try:
            data, media = load(uri)
            value = use(cast(str, uri), media)
        except MediaError as e:
            out.hashes.append(media_content_hash(data if data is not None else e.data, uri))
            out.values.append(None)
            out.reasons.append(e.reason)
            out.details.append(e.detail[:500])
            out.stages.append("preprocess")
            continue
        out.hashes.append(media_content_hash(data, uri))
        out.values.append(value)
        out.reasons.append(None)
        out.details.append(None)
        out.stages.append(None)
    return out


@dataclass(frozen=True)
class RunContext:
    """What a classifier may need from its run beyond the registry entry. Picklable."""

    #: The run's lake, for reference data that lives there (the hash bank).
    lake_root: str | None = None
    #: The hash_bank Delta version the driver pinned, so every actor matches the same bank.
    hash_bank_version: int | None = None
    #: Media URIs are read only under these roots (None: no restriction; see media.check_root).
    media_roots: tuple[str, ...] | None = None
    #: Words of an item's text scored at most (the run profile's ``max_item_words``).
    max_item_words: int = DEFAULT_MAX_ITEM_WORDS
    #: Seconds of an item's audio decoded and scored at most (the run profile's ``max_item_seconds``).
    max_item_seconds: int = DEFAULT_MAX_ITEM_SECONDS
    #: Tries of one batch, and of one row alone, before its rows are split or quarantined.
    score_attempts: int = 2
    #: Seconds before the second try of the same rows (doubled for each further try).
    score_backoff_s: float = 0.25


class Classifier(abc.ABC):
    """Base class of all classifiers (text today; image and audio share the contract)."""

    modality: ClassVar[Modality]
    #: False for classifiers with no model to put on a GPU (e.g. hash matching).
    uses_gpu: ClassVar[bool] = True
    #: The media classifiers' largest file read (set by their ``__init__``; text ones have none).
    max_bytes: int

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        if spec.modality != self.modality:
            raise ValueError(f"{type(self).__name__} scores {self.modality}, spec {spec.model_id} is {spec.modality}")
        self.spec = spec
        self.batch_size = batch_size  # rows per forward pass on the device
        self.context = context
        self.device: str | None = None

    @abc.abstractmethod
    def preprocess(self, batch: pa.Table) -> pa.Table:
        """CPU-side preparation. Must add CONTENT_HASH, QREASON, QDETAIL, QSTAGE."""

    def hash_key(self) -> tuple:
        """Classifiers with equal keys compute equal content hashes for a row."""
        return (self.modality, getattr(self, "max_bytes", None))

    def content_hashes(self, batch: pa.Table) -> list[str]:
        """The CONTENT_HASH ``preprocess`` gives each work row, computed without preparing the
        input (media: the bytes are read and hashed, not decoded)."""
        from moderation.storage.media import read_media

        out = []
        for uri in self.media_uris(batch):
            data = None
            if uri:
                try:
                    data = read_media(uri, max_bytes=self.max_bytes, kind=self.modality, roots=self.context.media_roots)
                except MediaError:
                    pass
            out.append(media_content_hash(data, uri))
        return out

    def media_uris(self, batch: pa.Table) -> list[str | None]:
        """The media URIs of a media classifier's work rows (its modality's catalog column)."""
        return batch.column(media_column(self.modality)).to_pylist()

    def prepare(self, batch: pa.Table) -> pa.Table:
        """``preprocess`` plus the checks every modality shares: a row without an item id
        cannot be keyed in ``scores`` (``missing_item_id``), and input fields whose bytes were
        not valid UTF-8 (``to_work_rows`` nulls them) cannot be scored (``invalid_utf8``)."""
        import pyarrow.compute as pc

        from moderation.storage.catalog import INVALID_UTF8

        out = self.preprocess(batch)
        checks = []
        if INVALID_UTF8 in out.column_names:
            invalid = out.column(INVALID_UTF8)
            lengths = pc.fill_null(pc.list_value_length(invalid), 0)
            if pc.any(pc.greater(lengths, 0)).as_py():
                fields = [", ".join(v or []) for v in invalid.to_pylist()]
                checks.append((pc.greater(lengths, 0), "invalid_utf8",
                               pa.array([f"field(s) {f} not valid UTF-8" for f in fields], pa.string())))
            out = out.drop_columns([INVALID_UTF8])
        ids = out.column("item_id")
        checks.append((pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True), "missing_item_id",
                       "item_id is null or empty"))
        for mask, reason, detail in checks:
            if not pc.any(mask).as_py():
                continue
            reasons = pc.if_else(mask, reason, out.column(QREASON))
            details = pc.if_else(mask, detail, out.column(QDETAIL))
            stages = pc.if_else(mask, "preprocess", out.column(QSTAGE))
            for name, col in ((QREASON, reasons), (QDETAIL, details), (QSTAGE, stages)):
                out = out.set_column(out.schema.get_field_index(name), name, col)
        return out

    @abc.abstractmethod
    def setup(self, device: str = "cpu") -> None:
        """Verify artifacts and load weights onto ``device``. Called once per actor."""

    def to_half(self) -> None:  # noqa: B027 - an optional hook, not abstract: the default converts nothing
        """Switch the loaded model to float16 (GPU actors, when the run profile allows it).
        Default: nothing to convert. The tolerance this may cost is tested per model
        (tests/classifiers/test_half_precision.py)."""

    @abc.abstractmethod
    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        """Score rows that passed preprocessing: per-row category scores and evidence."""

    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Score the scorable rows of ``batch``; rows that fail become quarantine rows.

        A failing batch is tried ``context.score_attempts`` times (with a backoff), then split
        in halves, each half tried once and split again, down to single rows, which are tried
        ``context.score_attempts`` times before they are quarantined as ``score_error`` with
        the last error and the number of attempts in ``qdetail``. Adds ``category_scores`` and
        ``evidence`` (null for quarantined rows).
        """
        n = batch.num_rows
        reasons = batch.column(QREASON).to_pylist()
        details = batch.column(QDETAIL).to_pylist()
        stages = batch.column(QSTAGE).to_pylist()
        scores: list[dict | None] = [None] * n
        evidence: list[dict | None] = [None] * n
        todo = [i for i in range(n) if reasons[i] is None]
        attempts = [0] * n
        failed: dict[int, BaseException] = {}
        if todo:
            self._score_rows(batch, todo, scores, evidence, attempts, failed, top=True)
        for i, exc in failed.items():
            reasons[i], stages[i] = SCORE_ERROR, "score"
            details[i] = f"failed {attempts[i]} attempts (the last alone): {type(exc).__name__}: {exc}"[:500]
        # Keep only what the writer needs (results.split_results): model inputs (text, segments,
        # decoded pixels) would otherwise travel on through the object store.
        out = batch.select([c for c in (*RESULT_COLUMNS, "modality", CONTENT_HASH, *COVERAGE_COLUMNS)
                            if c in batch.column_names])
        return (
            out.append_column("category_scores",
                              pa.array([None if s is None else list(s.items()) for s in scores], SCORE_TYPE))
            .append_column("evidence",
                           pa.array([None if e is None else list(e.items()) for e in evidence], EVIDENCE_TYPE))
            .append_column(QREASON, pa.array(reasons, pa.string()))
            .append_column(QDETAIL, pa.array(details, pa.string()))
            .append_column(QSTAGE, pa.array(stages, pa.string()))
        )

    def _score_rows(self, batch: pa.Table, rows: list[int], scores: list, evidence: list, attempts: list[int],
                    failed: dict[int, BaseException], *, top: bool = False) -> None:
        """Score ``rows`` of ``batch`` into ``scores``/``evidence``; rows failing every try go
        to ``failed``. The whole batch and a single row get ``score_attempts`` tries, the
        halves in between one each (a smaller batch is the retry: GPU memory, a slow call)."""
        tries = max(1, self.context.score_attempts) if top or len(rows) == 1 else 1
        last: BaseException | None = None
        for k in range(tries):
            if k:
                self._back_off(k)
            for i in rows:
                attempts[i] += 1
            try:
                s, e = self.score(batch.take(rows))
            except Exception as exc:  # noqa: BLE001 - retried, split, then quarantined with its reason
                last = exc
                continue
            for j, i in enumerate(rows):
                scores[i], evidence[i] = s[j], e[j]
            return
        if len(rows) == 1:
            assert last is not None  # tries >= 1, and every try failed
            failed[rows[0]] = last
            return
        log.warning("%s: batch of %d failed %d time(s) (%s: %s); splitting it", self.spec.model_id, len(rows), tries,
                    type(last).__name__, str(last)[:200])
        half = len(rows) // 2
        for part in (rows[:half], rows[half:]):
            self._score_rows(batch, part, scores, evidence, attempts, failed)

    def _back_off(self, k: int) -> None:
        """Wait before try ``k + 1`` of the same rows, after freeing cached GPU memory."""
        torch = sys.modules.get("torch")
        if torch is not None and self.device and self.device.startswith("cuda") and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        time.sleep(self.context.score_backoff_s * 2 ** (k - 1))
