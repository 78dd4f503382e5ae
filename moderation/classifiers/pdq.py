"""Known-image matching for cover art: the PDQ hash of each cover against the lake's hash bank
(``moderation.storage.bank``), a re-upload of banked content being found however it was re-encoded,
resized or slightly cropped.

Reading and decoding share the image classifier's reason codes (``image_missing`` …
``image_truncated``). The thresholds come from the registry artifact (a small JSON file,
digest-pinned like weights); the bank is data in the lake, versioned by Delta, and
``bank_version`` says which version a scoring actor loaded.

Scores are binary: 1.0 when the nearest bank hash is within ``max_distance`` bits, else 0.0.
A Hamming distance is not a probability, and a graded ``1 - d/256`` would put every unrelated
image near 0.5 (unrelated PDQ hashes differ in ~128 bits), where policy review thresholds
sit. The distance itself is kept in the evidence:

  ``pdq:match:<bank label>:d=<distance>``  within ``max_distance``
  ``pdq:none:d=<distance to the nearest>`` nothing within it
  ``pdq:none:bank_empty``                  no bank hash for this category (or no bank at all)
  ``pdq:low_quality:q=<quality>``          the cover's hash quality is below ``min_quality``
                                           (flat, blurred): scored 0.0, not quarantined,
                                           since such hashes match unrelated flat images

Categories: a registry category scores matches against bank rows of the same category;
``known_violating`` scores matches against every bank row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa

from moderation.classifiers.base import RunContext
from moderation.classifiers.image import CoverClassifier
from moderation.config import ModelSpec
from moderation.errors import ArtifactError

if TYPE_CHECKING:
    from moderation.storage.bank import BankSnapshot

log = logging.getLogger(__name__)

#: The registry category that any bank match counts toward, whatever the row's category.
CATCH_ALL_CATEGORY = "known_violating"
PARAMS_ARTIFACT = "params"


@dataclass(frozen=True)
class PdqParams:
    """Matching thresholds, read from the model's ``params`` artifact."""

    max_distance: int  # a bank hash within this many bits (inclusive) is a match; PDQ: 31
    min_quality: int  # covers whose hash quality is below this are not matched; PDQ: 50


def parse_params(data: bytes, *, where: str) -> PdqParams:
    """Parse the params artifact.

    Raises:
        ArtifactError: not a JSON object with exactly the integer fields of ``PdqParams`` in range.
    """
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ArtifactError(f"{where}: not valid JSON: {e}") from e
    expected = {"max_distance": (0, 256), "min_quality": (0, 100)}
    if not isinstance(obj, dict) or set(obj) != set(expected):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ArtifactError(f"{where}: expected an object with keys {sorted(expected)}, got {got}")
    for key, (lo, hi) in expected.items():
        value = obj[key]
        if type(value) is not int or not lo <= value <= hi:
            raise ArtifactError(f"{where}: field {key!r}: expected an integer in [{lo}, {hi}], got {value!r}")
    return PdqParams(**obj)


class PdqBankClassifier(CoverClassifier):
    uses_gpu: ClassVar[bool] = False  # hashing and XOR-popcount matching run on the CPU

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self._params: PdqParams | None = None
        self._banks: dict[str, BankSnapshot] | None = None  # category -> bank, after setup()
        self._bank_version: int | None = None

    # ---- CPU side -------------------------------------------------------------------
    def preprocess(self, batch: pa.Table) -> pa.Table:
        """Adds ``pdq_hash`` (hex) and ``pdq_quality`` besides the columns every modality adds."""
        from moderation.storage.bank import pdq_hash

        rows = self.covers(batch, lambda _uri, img: pdq_hash(img))  # (hex, quality) per cover
        return rows.prepared(batch, {
            "pdq_hash": pa.array([None if v is None else v[0] for v in rows.values], pa.string()),
            "pdq_quality": pa.array([None if v is None else v[1] for v in rows.values], pa.int32()),
        })

    # ---- scoring side ---------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Read the thresholds (digest-checked) and the latest bank of the run's lake.

        Matching is numpy on the CPU whatever ``device`` is. A missing or empty bank is not
        an error: nothing matches, and ``bank_version`` is None (missing) or the version.

        Raises:
            ArtifactError: params artifact missing, tampered or malformed.
            ValueError: the classifier was built without the run's lake root.
        """
        from moderation.storage.artifacts import read_verified
        from moderation.storage.bank import HASH_BANK_TABLE, load_bank
        from moderation.storage.lake import Lake

        ref = self.spec.artifacts.get(PARAMS_ARTIFACT)
        if ref is None:
            raise ArtifactError(f"model {self.spec.model_id}: needs an artifact named {PARAMS_ARTIFACT!r}; "
                                f"has {sorted(self.spec.artifacts)}")
        data = read_verified(self.spec.model_id, PARAMS_ARTIFACT, ref)
        params = parse_params(data, where=f"model {self.spec.model_id}: artifact {PARAMS_ARTIFACT} ({ref.uri})")
        if self.context.lake_root is None:
            raise ValueError(f"model {self.spec.model_id}: the hash bank is in the run's lake; build it with a "
                             "RunContext lake_root")
        lake = Lake(self.context.lake_root)
        bank = load_bank(lake, version=self.context.hash_bank_version)
        if len(bank) == 0:
            log.warning("%s: hash bank %s is %s: nothing will match", self.spec.model_id, lake.uri(HASH_BANK_TABLE),
                        "missing" if bank.version is None else f"empty at v{bank.version}")
        else:
            log.info("%s: %d bank hashes, %s v%d", self.spec.model_id, len(bank), lake.uri(HASH_BANK_TABLE),
                     bank.version)
        row_categories = np.asarray(bank.categories, dtype=object)
        self._banks = {
            c: bank if c == CATCH_ALL_CATEGORY else bank.take(np.flatnonzero(row_categories == c))
            for c in self.spec.categories
        }
        self._params = params
        self._bank_version = bank.version
        self.device = device

    @property
    def params(self) -> PdqParams:
        if self._params is None:
            raise RuntimeError("setup() was not called")
        return self._params

    @property
    def bank_version(self) -> int | None:
        """The ``hash_bank`` Delta version loaded by ``setup()``; None when there is no bank."""
        if self._banks is None:
            raise RuntimeError("setup() was not called")
        return self._bank_version

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        from moderation.storage.bank import nearest

        if self._banks is None or self._params is None:
            raise RuntimeError("setup() was not called")
        max_distance, min_quality = self._params.max_distance, self._params.min_quality
        scores: list[dict[str, float]] = []
        evidence: list[dict[str, str]] = []
        for hex_, quality in zip(batch.column("pdq_hash").to_pylist(), batch.column("pdq_quality").to_pylist(),
                                 strict=True):
            if quality < min_quality:
                scores.append({c: 0.0 for c in self._banks})
                evidence.append({c: f"pdq:low_quality:q={quality}" for c in self._banks})
                continue
            row_scores, row_evidence = {}, {}
            for category, bank in self._banks.items():
                hit = nearest(bank, hex_)
                if hit is None:
                    row_scores[category], row_evidence[category] = 0.0, "pdq:none:bank_empty"
                elif hit[0] <= max_distance:
                    row_scores[category], row_evidence[category] = 1.0, f"pdq:match:{bank.labels[hit[1]]}:d={hit[0]}"
                else:
                    row_scores[category], row_evidence[category] = 0.0, f"pdq:none:d={hit[0]}"
            scores.append(row_scores)
            evidence.append(row_evidence)
        return scores, evidence
