"""Image classifier for cover art: Yahoo's open_nsfw network, run in torch (GPU when the actor
has one) from safetensors weights that each node derives from the packaged ONNX (a derived
artifact, ``convert: onnx_graph``: built, digest-checked and cached by ``read_verified``).

Decoding happens on CPU in preprocessing and every failure mode becomes a quarantine reason
for the image modality only (the item's other modalities are still scored):

  image_missing, image_empty, image_too_large, image_unreadable   (reading the bytes)
  image_unsupported_format   (decodable by Pillow but not a cover-art format we accept)
  image_undecodable          (not an image, corrupt header)
  image_too_many_pixels      (decompression bomb: more pixels than ``max_pixels``)
  image_truncated            (header fine, pixel data cut short)
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa

from moderation.artifacts import read_verified
from moderation.classifiers.base import (
    Classifier,
    RunContext,
    media_content_hash,
    prepared,
)
from moderation.config import ModelSpec
from moderation.media import MediaError, read_media, shared

if TYPE_CHECKING:
    from moderation.classifiers.onnx_graph import GraphModule

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
INPUT_SHAPE = (224, 224, 3)


def decode_image(data: bytes, *, uri: str, max_pixels: int):
    """Decode ``data`` to an RGB Pillow image, or raise MediaError with a reason code."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors at 2x) above MAX_IMAGE_PIXELS; our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
    except Image.DecompressionBombError as e:
        raise MediaError("image_too_many_pixels", f"{uri}: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError("image_undecodable", f"{uri}: {e}") from e
    if fmt not in ACCEPTED_FORMATS:
        raise MediaError("image_unsupported_format", f"{uri}: format {fmt}; accepted {sorted(ACCEPTED_FORMATS)}")
    if width * height > max_pixels:
        raise MediaError("image_too_many_pixels", f"{uri}: {width}x{height} > {max_pixels} pixels")
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError("image_truncated", f"{uri}: {e}") from e


def load_cover(uri: str | None, *, max_bytes: int, max_pixels: int, roots: tuple[str, ...] | None = None):
    """(bytes, RGB Pillow image) of the cover art at ``uri`` (under ``roots``), or MediaError
    with its reason. Inside ``media.shared_reads`` a cover is read and decoded once."""
    if not uri:
        raise MediaError("image_missing", "cover_image is null or empty")

    def load():
        data = read_media(uri, max_bytes=max_bytes, kind="image", roots=roots)
        try:
            return data, decode_image(data, uri=uri, max_pixels=max_pixels)
        except MediaError as e:
            e.data = data
            raise

    # Decoded once per cover for all of a modality's models (media.shared_reads).
    return shared(("cover", uri, max_bytes, max_pixels, roots), load)


class OpenNsfwClassifier(Classifier):
    modality: ClassVar = "image"

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self.max_bytes = int(spec.preprocessing.get("max_bytes", 20_000_000))
        self.max_pixels = int(spec.preprocessing.get("max_pixels", 50_000_000))
        self._module: GraphModule | None = None

    # ---- CPU side -------------------------------------------------------------------
    def preprocess(self, batch: pa.Table) -> pa.Table:
        from moderation.classifiers.open_nsfw import preprocess_image

        uris = batch.column("cover_image").to_pylist()
        hashes: list[str] = []
        pixels: list[bytes | None] = []
        reasons: list[str | None] = []
        details: list[str | None] = []
        stages: list[str | None] = []
        for uri in uris:
            try:
                data, img = load_cover(uri, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                                       roots=self.context.media_roots)
                arr = preprocess_image(img)
                hashes.append(media_content_hash(data, uri))
                pixels.append(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
                reasons.append(None)
                details.append(None)
                stages.append(None)
            except MediaError as e:
                hashes.append(media_content_hash(e.data, uri))
                pixels.append(None)
                reasons.append(e.reason)
                details.append(e.detail[:500])
                stages.append("preprocess")
        return prepared(
            batch,
            hashes=hashes,
            inputs={
                "pixels": pa.array(pixels, pa.binary()),
            },
            reasons=reasons,
            details=details,
            stages=stages,
        )

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
        return [{category: p} for p in probs], [{category: "cover_image"} for _ in probs]
