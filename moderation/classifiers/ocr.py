"""Text in cover art: Tesseract reads the image, the project's text heads score what it read,
so a cover that shows a slur is caught like a title that contains it.

OCR runs on CPU in preprocessing (the ``tesseract`` binary in a subprocess, one thread per
call: the pipeline already runs one task per core). Scoring is delegated to a
``MiniLMHeadsClassifier`` built from the same registry entry, on the device.

Quarantine reasons are the image classifier's (``image_missing`` ... ``image_truncated``,
see ``moderation.classifiers.image``) plus ``ocr_failed`` (Tesseract exited non-zero or
timed out). An image without recognisable text is not quarantined: it scores 0.0 in every
category with evidence ``ocr:none``. A missing ``tesseract`` binary or language pack is a
deployment error, raised as ``ModerationError`` rather than quarantining every image.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass, fields

import pyarrow as pa

from moderation.classifiers.base import RunContext
from moderation.classifiers.image import CoverClassifier
from moderation.classifiers.text import MiniLMHeadsClassifier, coverage_columns
from moderation.classifiers.windows import Coverage
from moderation.config import ModelSpec
from moderation.errors import ConfigError, ModerationError
from moderation.storage.media import MediaError

#: The text heads are trained on English, so OCR reads English only.
OCR_LANGUAGE = "eng"
#: Evidence for an image in which OCR found no words.
NO_TEXT_EVIDENCE = "ocr:none"
EVIDENCE_CHARS = 200
INSTALL_HINT = "install it with `apt-get install tesseract-ocr tesseract-ocr-eng` (Debian/Ubuntu)"


def tesseract_binary() -> str:
    """Path of the ``tesseract`` executable on PATH.

    Raises:
        ModerationError: it is not installed.
    """
    path = shutil.which("tesseract")
    if path is None:
        raise ModerationError(f"the ocr_text classifier needs the tesseract binary, not found on PATH; {INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class OcrOptions:
    """How Tesseract reads a cover: the registry entry's ``preprocessing.ocr_<field>``, else
    these defaults (see ``ocr_image``)."""

    psm: int = 11  # page segmentation mode: 11, sparse text (text anywhere on the cover)
    timeout_s: float = 30.0
    min_side: int = 600
    max_side: int = 1600
    min_conf: float = 75.0

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OcrOptions:
        """The options of a registry entry, each read as its default's type.

        Raises:
            ConfigError: ``ocr_min_side`` not positive, or above ``ocr_max_side``.
        """
        defaults = cls()
        given = {f.name: spec.preprocessing.get(f"ocr_{f.name}") for f in fields(cls)}
        opts = cls(**{k: type(getattr(defaults, k))(v) for k, v in given.items() if v is not None})
        if not 0 < opts.min_side <= opts.max_side:
            raise ConfigError(
                f"model {spec.model_id}: preprocessing ocr_min_side ({opts.min_side}) must be positive "
                f"and at most ocr_max_side ({opts.max_side})"
            )
        return opts


def ocr_image(img, *, binary: str, uri: str, options: OcrOptions) -> str:
    """Words Tesseract reads in ``img`` (a Pillow image), in reading order, lines joined by
    newlines; ``""`` when it finds no word.

    Words under ``options.min_conf`` confidence, or without a letter or digit, are dropped: on photos
    (grass, gravel, star fields) sparse-text mode finds dozens of low-confidence "words" in
    the texture, which would otherwise be scored as text. An image whose only surviving words
    are single characters counts as having no text.

    The image is scaled so its longest side lies in ``[options.min_side, options.max_side]`` (Tesseract
    misses text under ~20 px high, as on thumbnails; large covers only cost time), made
    grayscale with its contrast stretched, and inverted when mostly dark, since Tesseract
    reads dark text on a light ground best. On rendered covers (light and dark grounds,
    gradients, text over photos) this read more words than Tesseract's own colour handling
    or its adaptive thresholding modes; light outlined text on dark artwork was garbled
    without the inversion.

    Raises:
        MediaError: ``ocr_failed`` when Tesseract exits non-zero or runs past ``options.timeout_s``.
        ModerationError: Tesseract cannot load its English language data.
    """
    from PIL import Image, ImageOps, ImageStat

    min_side, max_side, timeout_s = options.min_side, options.max_side, options.timeout_s
    side = max(img.size)
    scale = min_side / side if side < min_side else max_side / side if side > max_side else 1.0
    if scale != 1.0:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        # reducing_gap: a box pre-reduction first, so a 50 Mpx cover shrinks in milliseconds.
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=None if scale > 1 else 3.0)
    img = ImageOps.autocontrast(img.convert("L"), cutoff=1)
    if ImageStat.Stat(img).median[0] < 128:
        img = ImageOps.invert(img)
    buf = io.BytesIO()
    img.save(buf, format="BMP")  # uncompressed: the cheapest format to hand over on stdin
    # One OpenMP thread: several OCR tasks already run side by side, and on 2 cores Tesseract's
    # own threading made textured photos 2-4x slower.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    cmd = [binary, "stdin", "stdout", "--psm", str(options.psm), "-l", OCR_LANGUAGE, "tsv"]
    try:
        proc = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise MediaError("ocr_failed", f"{uri}: tesseract ran past {timeout_s}s") from e
    except FileNotFoundError as e:
        raise ModerationError(f"tesseract binary {binary} disappeared; {INSTALL_HINT}") from e
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if "Failed loading language" in stderr:
            raise ModerationError(
                f"tesseract cannot load its {OCR_LANGUAGE!r} language data: {stderr.splitlines()[0]}; {INSTALL_HINT}"
            )
        raise MediaError("ocr_failed", f"{uri}: tesseract exited {proc.returncode}: {stderr[-300:]}")
    return _tsv_text(proc.stdout.decode("utf-8", "replace"), min_conf=options.min_conf)


def _tsv_text(tsv: str, *, min_conf: float) -> str:
    """Confident words of Tesseract's TSV output, one line of text per recognised line."""
    lines: dict[tuple[str, str, str], list[str]] = {}
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        word = (row.get("text") or "").strip()
        if row.get("level") != "5" or not word or float(row["conf"]) < min_conf:
            continue
        if any(ch.isalnum() for ch in word):
            lines.setdefault((row["block_num"], row["par_num"], row["line_num"]), []).append(word)
    words = [w for ws in lines.values() for w in ws]
    if not any(sum(ch.isalnum() for ch in w) >= 2 for w in words):
        return ""
    return "\n".join(" ".join(ws) for ws in lines.values())


class OcrTextClassifier(CoverClassifier):
    """OCR of ``cover_image`` scored by the MiniLM text heads (categories of the text model)."""

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        self.ocr = OcrOptions.from_spec(spec)
        # Same artifacts, categories, windows and word limit as the text model; only the
        # modality of the rows it sees differs.
        self._text = MiniLMHeadsClassifier(spec.model_copy(update={"modality": "text"}), batch_size=batch_size,
                                           context=context)

    # ---- CPU side -------------------------------------------------------------------
    def preprocess(self, batch: pa.Table) -> pa.Table:
        binary = tesseract_binary()

        def read_text(uri: str, img) -> tuple[str, Coverage]:
            raw = ocr_image(img, binary=binary, uri=uri, options=self.ocr)
            fields, cov = self._text.limited({"body_text": raw}, max_chars=None)
            return fields["body_text"], cov

        rows = self.covers(batch, read_text)
        texts = [None if v is None else v[0] for v in rows.values]
        wins, coverage = self._text.scored_windows([{"body_text": t or ""} for t in texts],
                                                   [None if v is None else v[1] for v in rows.values])
        return rows.prepared(batch, {
            "ocr_text": pa.array(texts, pa.string()),  # "" when no text was found
            "segments": pa.array([[w.text for w in ws] for ws in wins], pa.list_(pa.string())),
            # The text heads report the winning segment's name as evidence: name each window
            # by the words it holds, so the evidence is the OCR text itself.
            "segment_names": pa.array([[f"ocr:{w.text[:EVIDENCE_CHARS]}" for w in ws] for ws in wins],
                                      pa.list_(pa.string())),
            **coverage_columns(coverage),
        })

    # ---- device side ----------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        self._text.setup(device)
        self.device = device

    def to_half(self) -> None:
        self._text.to_half()

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        categories = self.spec.categories
        n = batch.num_rows
        scores = [dict.fromkeys(categories, 0.0) for _ in range(n)]
        evidence = [dict.fromkeys(categories, NO_TEXT_EVIDENCE) for _ in range(n)]
        with_text = [i for i, segs in enumerate(batch.column("segments").to_pylist()) if segs]
        if with_text:
            s, e = self._text.score(batch.take(with_text))
            for j, i in enumerate(with_text):
                scores[i], evidence[i] = s[j], e[j]
        return scores, evidence
