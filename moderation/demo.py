"""The demo catalog: a Delta table of tracks, episodes, audiobooks and shows whose text carries
real labelled posts from ../shared/data, so a known share of items should be flagged.

Labelled posts come only from held-out splits the text heads never saw (HateXplain
validation and test, the held-out YouTube video) plus German GermEval tweets (never trained
on: the encoder is English-only, and the reports should show that). Each post is planted in
one field (title, description, or inside the lyrics/transcript) of an otherwise ordinary
item, and its source and label are kept in columns for evaluation. Cover art and audio
clips point at ../shared/data/media. About 1% of items have no usable text at all, so the
quarantine path is exercised. Without ../shared/data the catalog is generated text only
(benign and spam-like), and ``DemoCatalog.used_shared_data`` says so.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from moderation.datasets import LabelledText, read_hatexplain, read_youtube_spam
from moderation.schemas import CATALOG_SCHEMA, STR_LIST

DEMO_SCHEMA = pa.schema(
    list(CATALOG_SCHEMA)
    + [
        pa.field("source_dataset", pa.string()),  # where the planted text came from; null if none
        pa.field("source_label", pa.string()),  # the source's own label (e.g. hatespeech, spam)
        pa.field("planted_field", pa.string()),  # title | description | body_text
        pa.field("expected_categories", STR_LIST),  # categories the planted text is labelled with
    ]
)

ITEM_TYPES = [("track", 0.5), ("episode", 0.25), ("audiobook", 0.15), ("show", 0.10)]
MARKETS = ["US", "GB", "DE", "SE", "BR", "IN", "JP", "MX"]
_ADJ = ["Midnight", "Golden", "Electric", "Quiet", "Endless", "Broken", "Neon", "Silver", "Wild", "Paper",
        "Summer", "Northern", "Hidden", "Velvet", "Lonely", "Bright"]
_NOUN = ["Drive", "Garden", "Harbor", "Skyline", "River", "Letters", "Echoes", "Motel", "Parade", "Signals",
         "Horizon", "Kitchen", "Lanterns", "Orchard", "Station", "Weather"]
_TOPIC = ["gardening", "city history", "long-distance running", "jazz records", "home cooking", "local politics",
          "astronomy", "startup life", "board games", "bird watching", "film scores", "travel on a budget"]
_LYRIC = [
    "we were dancing in the kitchen light", "the radio was playing our song", "I keep your letters by the door",
    "summer rain on an open road", "hold on, the morning is coming", "my heart beats like a drum tonight",
    "running through the city with you", "every star is falling slow", "I left my worries by the sea",
    "sing it loud and sing it long",
]
_TRANSCRIPT = [
    "welcome back to the show, today we talk about", "our guest has spent ten years working on",
    "before the break we were discussing", "thanks to everyone who wrote in about last week's episode",
    "in the next chapter the family moves to", "let's take a listener question about",
]
_SPAM_FAKE = [
    "Check out my channel and subscribe for free gift cards!!!", "WIN a brand new phone, click the link in my bio now",
    "Make $500 a day from home, message me to learn how", "Free followers! Visit my page and get 10k likes today",
]


#: Shared photos that play "known violating images" in the demo's hash bank (they are benign
#: CC0 photos; no violating imagery is used or generated). Altered copies of them are planted.
BANKED_IMAGES = ("coffee.png", "chelsea.png")


@dataclass(frozen=True)
class DemoCatalog:
    uri: str
    items: int
    used_shared_data: bool
    planted: dict[str, int]  # source_label -> items
    bank_images: tuple[str, ...] = ()  # originals to add to the hash bank


def render_text_cover(photo: str, text: str, out: Path) -> None:
    """A 512x512 cover: the photo with ``text`` printed on a light panel, as JPEG."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    img = Image.open(photo).convert("RGB").resize((512, 512))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=30)
    lines = textwrap.wrap(text, width=28)[:6]
    top = 256 - 20 * len(lines)
    draw.rectangle((16, top - 12, 496, top + 40 * len(lines) + 4), fill=(245, 245, 240))
    for k, line in enumerate(lines):
        draw.text((28, top + 40 * k), line, fill=(10, 10, 10), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="JPEG", quality=90)


_ESPEAK = shutil.which("espeak-ng")


def speak(text: str, out: Path) -> None:
    """Speech for ``text`` as a WAV file, synthesised by espeak-ng (Debian)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_ESPEAK or "espeak-ng", "-v", "en-us", "-s", "150", "-w", str(out), text],
                   check=True, capture_output=True, timeout=60)


def mix_over_music(speech_wav: Path, music: str, out: Path, *, music_gain: float = 0.3) -> None:
    """``speech_wav`` spoken over the start of ``music`` (looped if shorter), 16 kHz mono WAV:
    the way lyrics or a voice-over sit on a track."""
    import wave

    import numpy as np
    from faster_whisper import decode_audio  # PyAV: any container, resampled to 16 kHz mono

    speech = decode_audio(str(speech_wav))
    bed = decode_audio(music)
    bed = np.tile(bed, int(np.ceil(len(speech) / max(1, len(bed))))) if len(bed) < len(speech) else bed
    mix = np.clip(speech + music_gain * bed[: len(speech)], -1.0, 1.0)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((mix * 32767).astype("<i2").tobytes())


def altered_copy(photo: str, out: Path, rng: random.Random) -> None:
    """A re-encoded, resized, slightly cropped copy: what re-uploads of a banked image look like."""
    from PIL import Image

    img = Image.open(photo).convert("RGB")
    w, h = img.size
    dx, dy = int(w * rng.uniform(0.0, 0.03)), int(h * rng.uniform(0.0, 0.03))
    img = img.crop((dx, dy, w - dx, h - dy))
    scale = rng.choice([0.5, 0.75, 1.25])
    img = img.resize((max(32, int(img.width * scale)), max(32, int(img.height * scale))))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="JPEG", quality=rng.choice([60, 75, 90]))


def _title(rng: random.Random) -> str:
    return f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}"


def _body(rng: random.Random, item_type: str, lines: int) -> str:
    pool = _LYRIC if item_type == "track" else _TRANSCRIPT
    out = []
    for _ in range(lines):
        line = rng.choice(pool)
        out.append(f"{line} {rng.choice(_TOPIC)}" if item_type != "track" else line)
    return ". ".join(out)


def _labelled_pool(data_dir: Path | None, rng: random.Random) -> tuple[list[LabelledText], bool]:
    if data_dir is not None and (data_dir / "text" / "hatexplain").is_dir():
        pool = read_hatexplain(data_dir, "validation") + read_hatexplain(data_dir, "test")
        pool += [r for r in read_youtube_spam(data_dir) if r.split == "test"]
        # Other languages: held-out rows only (the multilingual heads train on the rest).
        from moderation.corpora import read_corpus

        for name in ("germeval2018", "offendes"):
            held = [r for r in read_corpus(data_dir, name) if r.split == "test"]
            pool += rng.sample(held, min(120, len(held)))
        return pool, True
    generated = [LabelledText(t, "generated", "demo", "spam", categories={"spam": 1}) for t in _SPAM_FAKE]
    generated += [LabelledText(f"{l} {rng.choice(_TOPIC)}", "generated", "demo", "normal", categories={}) for l in _LYRIC]
    return generated, False


def build_demo_table(
    *, items: int = 2000, data_dir: Path | None = None, seed: int = 7, media_dir: Path | None = None,
    cover_share: float = 1.0, audio_share: float = 1.0,
) -> tuple[pa.Table, bool]:
    """The demo catalog as an Arrow table (DEMO_SCHEMA) and whether shared data was used.

    With ``media_dir``, media are generated there too: covers with planted labelled text
    rendered onto a shared photo (``planted_field = "cover_image"``), and altered copies of
    the BANKED_IMAGES (``source_label = "banked_copy"``). ``cover_share`` is the share of
    items that have cover art at all (scoring every cover on a laptop CPU takes a while).
    """
    rng = random.Random(seed)
    pool, used_shared = _labelled_pool(data_dir, rng)
    rng.shuffle(pool)
    media = Path(data_dir) / "media" if data_dir else None
    all_images = sorted(str(p.resolve()) for p in (media / "images").glob("*")) if media and media.is_dir() else []
    banked = [p for p in all_images if Path(p).name in BANKED_IMAGES]
    images = [p for p in all_images if Path(p).name not in BANKED_IMAGES] if media_dir else all_images
    clips = sorted(str(p.resolve()) for p in (media / "audio").glob("*.ogg")) if media and media.is_dir() else []
    n_empty = max(1, items // 100)
    n_labelled = min(len(pool), int(items * 0.8)) if used_shared else int(items * 0.3)
    types, weights = zip(*ITEM_TYPES)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(items):
        item_type = rng.choices(types, weights)[0]
        prefix = {"track": "trk", "episode": "epi", "audiobook": "abk", "show": "shw"}[item_type]
        row = {
            "item_id": f"{prefix}_{i:07d}",
            "item_type": item_type,
            "title": _title(rng),
            "description": f"A {item_type} about {rng.choice(_TOPIC)}.",
            "body_text": None if item_type == "show" else _body(rng, item_type, rng.randint(3, 12)),
            "language": "en",
            "markets": sorted(rng.sample(MARKETS, rng.randint(1, 4))),
            "creator_id": f"creator_{rng.randint(1, 400):04d}",
            "explicit": item_type == "track" and rng.random() < 0.2,
            "cover_image": rng.choice(images) if images and rng.random() < cover_share else None,
            "audio_clip": rng.choice(clips) if clips and item_type != "show" and rng.random() < audio_share else None,
            "updated_at": base + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 300)),
            "source_dataset": None,
            "source_label": None,
            "planted_field": None,
            "expected_categories": [],
        }
        if i < n_empty:
            row.update(title="  ", description="", body_text=None)
        elif media_dir is not None and banked and i < n_empty + max(4, items // 200):
            out = media_dir / "covers" / f"{row['item_id']}.jpg"
            altered_copy(rng.choice(banked), out, rng)
            row.update(cover_image=str(out.resolve()), source_dataset="demo_hash_bank", source_label="banked_copy",
                       planted_field="cover_image", expected_categories=["known_violating"])
        elif i < n_empty + n_labelled:
            src = pool[(i - n_empty) % len(pool)]
            fields = ["title", "description"] + ([] if item_type == "show" else ["body_text"])
            field = rng.choice(fields)
            if media_dir is not None and row["audio_clip"] and _ESPEAK and len(src.text) <= 200 and rng.random() < 0.5:
                field = "audio_clip"
                out = media_dir / "audio" / f"{row['item_id']}.wav"
                speak(src.text, out)
                music = [c for c in clips if not Path(c).name[0].isdigit()]  # not the read-speech clips
                if music and rng.random() < 0.5:
                    mix_over_music(out, rng.choice(music), out)
                row["audio_clip"] = str(out.resolve())
            elif media_dir is not None and images and len(src.text) <= 160 and rng.random() < 0.1:
                field = "cover_image"
                out = media_dir / "covers" / f"{row['item_id']}.jpg"
                render_text_cover(rng.choice(images), src.text, out)
                row["cover_image"] = str(out.resolve())
            elif field == "body_text":
                parts = row["body_text"].split(". ")
                parts.insert(rng.randint(0, len(parts)), src.text)
                row["body_text"] = ". ".join(parts)
            else:
                row[field] = src.text
            row.update(
                source_dataset=src.source, source_label=src.label, planted_field=field, language=src.language,
                expected_categories=sorted(c for c, v in src.categories.items() if v),
            )
            if src.language == "de" and "DE" not in row["markets"]:
                row["markets"] = sorted(row["markets"] + ["DE"])
        rows.append(row)
    rng.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=DEMO_SCHEMA), used_shared


def write_demo_catalog(
    uri: str, *, items: int = 2000, data_dir: Path | None = None, seed: int = 7, media_dir: Path | None = None,
    cover_share: float = 1.0, audio_share: float = 1.0,
) -> DemoCatalog:
    """Write (or overwrite, as a new Delta version) the demo catalog at ``uri``."""
    from deltalake import write_deltalake

    from moderation.lake import storage_options

    table, used = build_demo_table(items=items, data_dir=data_dir, seed=seed, media_dir=media_dir,
                                   cover_share=cover_share, audio_share=audio_share)
    write_deltalake(uri, table, mode="overwrite", schema_mode="overwrite", storage_options=storage_options(uri))
    labels = table.column("source_label").to_pylist()
    planted: dict[str, int] = {}
    for label in labels:
        if label is not None:
            planted[label] = planted.get(label, 0) + 1
    bank = tuple(sorted(str((Path(data_dir) / "media" / "images" / n).resolve()) for n in BANKED_IMAGES)) \
        if media_dir is not None and data_dir is not None and (Path(data_dir) / "media" / "images").is_dir() else ()
    return DemoCatalog(uri=uri, items=table.num_rows, used_shared_data=used, planted=planted, bank_images=bank)
