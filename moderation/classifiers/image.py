"""Image classifier for cover art: Yahoo's open_nsfw network, run in torch (GPU when the actor
has one) from safetensors weights that each node derives from the packaged ONNX (a derived
artifact, ``convert: onnx_graph``: built, digest-checked and cached by ``read_verified``).

Decoding happens on CPU in preprocessing (``moderation.storage.media.load_cover``, shared by the image
classifiers through ``CoverClassifier``) and every failure mode becomes a quarantine reason
for the image modality only (the item's other modalities are still scored):

  image_missing, image_empty, image_too_large, image_unreadable   (reading the bytes)
  image_unsupported_format   (decodable by Pillow but not a cover-art format we accept)
  image_undecodable          (not an image, corrupt header)
  image_too_many_pixels      (decompression bomb: more pixels than ``max_pixels``)
  image_truncated            (header fine, pixel data cut short)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from moderation.classifiers.base import Classifier, MediaInputs, RunContext, media_inputs
from moderation.config import ModelSpec
from moderation.modalities import media_column
from moderation.storage.artifacts import read_verified
from moderation.storage.media import load_cover

if TYPE_CHECKING:
    from moderation.classifiers.onnx_graph import GraphModule

V = TypeVar("V")

INPUT_SHAPE = (224, 224, 3)


class CoverClassifier(Classifier):
    """The image classifiers' shared reading of cover art: ``preprocessing.max_bytes`` and
    ``max_pixels`` bound each cover, ``media.load_cover`` reads and decodes it (once for all
    of a modality's models inside ``media.shared_reads``), and a cover that cannot be read or
    decoded quarantines its row with the reason ``load_cover`` gives."""

    modality: ClassVar = "image"

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self.max_bytes = int(spec.preprocessing.get("max_bytes", 20_000_000))
        self.max_pixels = int(spec.preprocessing.get("max_pixels", 50_000_000))

    def covers(self, batch: pa.Table, use: Callable[[str, Any], V]) -> MediaInputs[V]:
        """``use(uri, image)`` for each work row's cover (an RGB Pillow image); a
        ``MediaError`` from reading, decoding or ``use`` quarantines the row."""
        return media_inputs(self.media_uris(batch), self._load, use)

    def _load(self, uri: str | None):
        return load_cover(uri, max_bytes=self.max_bytes, max_pixels=self.max_pixels, roots=self.context.media_roots)


class OpenNsfwClassifier(CoverClassifier):
    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self._module: GraphModule | None = None

    # ---- CPU side -------------------------------------------------------------------
    def preprocess(self, batch: pa.Table) -> pa.Table:
        from moderation.classifiers.open_nsfw import preprocess_image

        rows = self.covers(
            batch, lambda _uri, img: np.ascontiguousarray(preprocess_image(img), dtype=np.float32).tobytes())
        return rows.prepared(batch, {"pixels": pa.array(rows.values, pa.binary())})

    # ---- device side ----------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        from moderation.classifiers.onnx_graph import load_graph_module

        data = read_verified(self.spec.model_id, "weights", self.spec.artifacts["weights"])
        self._module = load_graph_module(data).to(device)
        self.device = device

    def to_half(self) -> None:
        if self._module is None:
            raise RuntimeError("setup() was not called")
        self._module.half()  # nsfw_probability casts its input to the module's dtype

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        from moderation.classifiers.open_nsfw import nsfw_probability

        if self._module is None:
            raise RuntimeError("setup() was not called")
        arrays = [np.frombuffer(b, dtype=np.float32).reshape(INPUT_SHAPE) for b in batch.column("pixels").to_pylist()]
        (category,) = self.spec.categories
        probs: list[float] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = np.stack(arrays[start : start + self.batch_size])
            probs.extend(float(p) for p in nsfw_probability(self._module, chunk, device=self.device or "cpu"))
        field = media_column(self.modality)  # the evidence: the whole cover
        return [{category: p} for p in probs], [{category: field} for _ in probs]
