"""Which catalog columns feed which modality: the one table the catalog reader, the work rows,
the classifiers and the evaluation all read.

Adding a modality is a row here (and its name in ``Modality``) plus its classifier
(``moderation/classifiers/registry.py``). Plain Python, no dependencies: ``moderation.config``
and ``moderation.schemas`` import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Modality = Literal["text", "image", "audio"]

#: The catalog's text fields, in the order a text classifier reads (and hashes) them.
TEXT_COLUMNS = ("title", "description", "body_text")


@dataclass(frozen=True)
class ModalityColumns:
    """The catalog columns of one modality."""

    #: The fields whose input the modality scores: invalid UTF-8 there quarantines the pair.
    inputs: tuple[str, ...]
    #: The column holding the media URI: an item is selected for the modality only when it has
    #: one. None: every item is selected (no usable text is a quarantine reason, not a reason
    #: to skip).
    uri: str | None = None


MODALITY_COLUMNS: dict[Modality, ModalityColumns] = {
    "text": ModalityColumns(inputs=TEXT_COLUMNS),
    "image": ModalityColumns(inputs=("cover_image",), uri="cover_image"),
    "audio": ModalityColumns(inputs=("audio_clip",), uri="audio_clip"),
}
MODALITIES: tuple[Modality, ...] = tuple(MODALITY_COLUMNS)
if set(MODALITIES) != set(get_args(Modality)):  # pragma: no cover - a table edit without the Literal
    raise AssertionError(f"MODALITY_COLUMNS {MODALITIES} and Modality {get_args(Modality)} differ")

#: Media modality -> the catalog column holding its URI.
MEDIA_COLUMNS: dict[str, str] = {m: c.uri for m, c in MODALITY_COLUMNS.items() if c.uri is not None}
#: Modality -> the catalog fields it scores.
MODALITY_INPUTS: dict[str, tuple[str, ...]] = {m: c.inputs for m, c in MODALITY_COLUMNS.items()}
#: Every catalog field some modality scores, in table order (text fields, then media URIs).
INPUT_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for cols in MODALITY_INPUTS.values() for c in cols))


def media_column(modality: str) -> str:
    """The catalog column holding ``modality``'s media URI.

    Raises:
        KeyError: ``modality`` is not a media modality (text, or unknown).
    """
    return MEDIA_COLUMNS[modality]
