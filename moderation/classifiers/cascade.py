"""A text cascade: a cheap model screens every segment, a strong model re-scores the rest.

Registry entry (``kind: cascade_heads``), e.g. conf/models/text-cascade-muse-e5-v1.yaml::

    preprocessing:
      cheap: text-muse-heads-v1        # scores every segment
      strong: text-e5-heads-v1         # re-scores the segments the cheap model does not clear
      band_low.hate: 0.08              # per category: below this the cheap model clears it
      ...
      band_high: 1.0                   # at or above this (every category) the cheap score stands
    artifacts:                         # the members' artifacts, pinned again as cheap.* / strong.*
      cheap.encoder: ...

A segment goes to the strong model when any category's cheap probability lies in
``[band_low.<category>, band_high)``; its scores are then the strong model's, for every
category. With ``band_high: 1`` (the shipped entry) every score that can reach a policy threshold
comes from the strong model, so the cascade loses only what the cheap model clears wrongly:
``scripts/tune_cascade.py`` picks ``band_low`` on validation data so that it keeps a set share
of the strong model's positives, and reports the recall lost and the traffic sent.

The cascade pins its members' artifacts itself (``cheap.*``, ``strong.*``), so its digest
changes whenever either member's weights do; ``setup`` refuses a registry whose member entry pins
other digests than the cascade does. Each item's evidence gets ``cascade``: ``strong`` when any
of its segments went to the strong model, else ``cheap``; a backfill counts them into
``runs.cascade`` (band and share of traffic sent).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from moderation.classifiers.base import RunContext
from moderation.classifiers.text import MiniLMHeadsClassifier
from moderation.config import ModelSpec

CASCADE_EVIDENCE_KEY = "cascade"


def member_spec(spec: ModelSpec, role: str, registry: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """The ``cheap`` or ``strong`` member's registry entry, with the artifacts the cascade pins.

    Raises ValueError when the member is missing, of another modality or kind, or when the
    registry entry pins different artifacts than the cascade (a member retrained without the
    cascade being re-pinned)."""
    from moderation.config import load_model_registry

    member_id = spec.preprocessing.get(role)
    registry = registry if registry is not None else load_model_registry()
    if not isinstance(member_id, str) or member_id not in registry:
        raise ValueError(f"model {spec.model_id}: preprocessing.{role} names no registry model ({member_id!r})")
    member = registry[member_id]
    if member.modality != "text" or member.kind not in ("minilm_heads", "muse_heads", "e5_heads"):
        raise ValueError(f"model {spec.model_id}: {role} member {member_id} is a {member.modality}/{member.kind} "
                         "model, not text heads")
    if tuple(member.categories) != tuple(spec.categories):
        raise ValueError(f"model {spec.model_id}: {role} member {member_id} scores {list(member.categories)}, "
                         f"the cascade {list(spec.categories)}")
    pinned = {k.removeprefix(f"{role}."): v for k, v in spec.artifacts.items() if k.startswith(f"{role}.")}
    if {k: v.sha256 for k, v in pinned.items()} != {k: v.sha256 for k, v in member.artifacts.items()}:
        raise ValueError(f"model {spec.model_id}: the {role}.* artifacts it pins differ from {member_id}'s registry "
                         f"entry; re-pin the cascade after changing {member_id}")
    return member.model_copy(update={"artifacts": pinned})


def bands(spec: ModelSpec) -> tuple[np.ndarray, float]:
    """(per-category lower bounds, upper bound) of the band sent to the strong model."""
    low = []
    for c in spec.categories:
        v = spec.preprocessing.get(f"band_low.{c}")
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"model {spec.model_id}: preprocessing.band_low.{c} must be a probability, got {v!r}")
        low.append(float(v))
    high = spec.preprocessing.get("band_high", 1.0)
    if not isinstance(high, (int, float)) or not 0.0 < high <= 1.0:
        raise ValueError(f"model {spec.model_id}: preprocessing.band_high must be in (0, 1], got {high!r}")
    return np.array(low, dtype=np.float32), float(high)


class CascadeHeadsClassifier(MiniLMHeadsClassifier):
    """Text preprocessing as the heads classifiers (segments); scoring through two members."""

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self.low, self.high = bands(spec)
        self.cheap: MiniLMHeadsClassifier | None = None
        self.strong: MiniLMHeadsClassifier | None = None
        #: Which segments of the last ``predict_proba`` call went to the strong model.
        self._last_sent = np.zeros(0, dtype=bool)

    def setup(self, device: str = "cpu") -> None:
        from moderation.classifiers.registry import build_classifier

        members: list[MiniLMHeadsClassifier] = []
        for role in ("cheap", "strong"):
            clf = build_classifier(member_spec(self.spec, role), batch_size=self.batch_size, context=self.context)
            assert isinstance(clf, MiniLMHeadsClassifier)  # member_spec admits text heads only
            clf.setup(device)
            members.append(clf)
        cheap, strong = members
        self.cheap, self.strong = cheap, strong
        self._encoder = strong._encoder  # setup() done: what the base class checks
        self.device = device

    def to_half(self) -> None:
        if self.cheap is None or self.strong is None:
            raise RuntimeError("setup() was not called")
        self.cheap.to_half()
        self.strong.to_half()

    def route(self, p_cheap: np.ndarray) -> np.ndarray:
        """Which rows of cheap probabilities go to the strong model: any category in its band."""
        return np.asarray(((p_cheap >= self.low) & (p_cheap < self.high)).any(axis=1))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self.cheap is None or self.strong is None:
            raise RuntimeError("setup() was not called")
        p = self.cheap.predict_proba(texts)
        send = self.route(p)
        if send.any():
            p = p.copy()
            p[send] = self.strong.predict_proba([t for t, s in zip(texts, send, strict=True) if s])
        self._last_sent = send
        return p

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        self._last_sent = np.zeros(0, dtype=bool)
        scores, evidence = super().score(batch)  # calls predict_proba once over every segment
        sent = self._last_sent
        k = 0
        for segs, ev in zip(batch.column("segments").to_pylist(), evidence, strict=True):
            ev[CASCADE_EVIDENCE_KEY] = "strong" if sent[k : k + len(segs)].any() else "cheap"
            k += len(segs)
        return scores, evidence


__all__ = ["CASCADE_EVIDENCE_KEY", "CascadeHeadsClassifier", "bands", "member_spec"]
