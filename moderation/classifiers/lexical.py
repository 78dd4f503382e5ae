"""Lexical baseline: the TF-IDF + calibrated linear SVM of the ``alt-profanity-check`` package,
scored like the project's own text models so the evaluation can compare against it.

The package ships its model as joblib (pickle) files, which this project never loads at run
time. ``scripts/convert_profanity_check.py`` converts them once (digest-checked, restricted
unpickler) into one scikit-learn ``Pipeline(vectorizer, model)`` saved with skops, whose loader
builds only the types it is told to trust and executes no code from the file. This module reads
that artifact through ``read_verified`` (SHA-256 pinned in conf/models/) and ``skops.io.loads``
with an explicit list of trusted types.

The model gives one probability, P(offensive language); the registry entry reports it for each
of its categories (hate and harassment). Text handling is exactly the MiniLM classifier's
(same normalisation, content hashes and segments, item score = max over segments with the
winning segment as evidence): the subclass only replaces how a list of texts is scored.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from moderation.classifiers.base import RunContext
from moderation.classifiers.text import MiniLMHeadsClassifier
from moderation.config import ModelSpec
from moderation.errors import ArtifactError
from moderation.storage.artifacts import read_verified

#: The types in the skops artifact beyond skops' default trusted set (scikit-learn estimators,
#: numpy, scipy and builtin containers), reviewed: the calibration wrappers of
#: CalibratedClassifierCV hold only the fitted LinearSVC and two sigmoid parameters. Equal to
#: ``skops.io.get_untrusted_types`` of the shipped artifact (tests/classifiers/test_lexical_baseline.py).
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)

#: The model's positive class ("offensive language"), whose probability is reported.
POSITIVE_CLASS = 1


def load_pipeline(model_id: str, data: bytes):
    """The scikit-learn pipeline in skops bytes ``data``, building only trusted types.

    Raises:
        ArtifactError: the file holds types outside skops' defaults and ``TRUSTED_TYPES``, or
            is not a fitted text pipeline with the expected classes.
    """
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        pipeline = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as e:
        raise ArtifactError(f"model {model_id}: skops artifact refused: {e}") from e
    classes = list(getattr(pipeline, "classes_", []))
    if not hasattr(pipeline, "predict_proba") or POSITIVE_CLASS not in classes:
        raise ArtifactError(
            f"model {model_id}: skops artifact is not a fitted text classifier with class "
            f"{POSITIVE_CLASS} (got {type(pipeline).__name__}, classes {classes})"
        )
    return pipeline


class ProfanityCheckClassifier(MiniLMHeadsClassifier):
    """alt-profanity-check's P(offensive) for every category of the registry entry.

    Inherits preprocessing, content hashes and the max-over-segments ``score`` from
    ``MiniLMHeadsClassifier``; replaces the model (``setup``, ``predict_proba``).
    """

    modality: ClassVar = "text"
    uses_gpu: ClassVar[bool] = False  # sparse TF-IDF and a linear SVM: CPU only

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self._pipeline = None
        self._positive: int | None = None

    def setup(self, device: str = "cpu") -> None:
        data = read_verified(self.spec.model_id, "pipeline", self.spec.artifacts["pipeline"])
        pipeline = load_pipeline(self.spec.model_id, data)
        self._positive = list(pipeline.classes_).index(POSITIVE_CLASS)
        self._pipeline = pipeline
        self.device = "cpu"  # scikit-learn: whatever the actor was given, scoring runs on the CPU

    def to_half(self) -> None:
        """Nothing to convert (no torch model)."""

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """P(offensive) of each text, repeated for each category: shape (len(texts), n_categories)."""
        if self._pipeline is None:
            raise RuntimeError("setup() was not called")
        if not texts:
            return np.zeros((0, len(self.spec.categories)))
        p = self._pipeline.predict_proba(list(texts))[:, self._positive]
        return np.repeat(p[:, None], len(self.spec.categories), axis=1)
