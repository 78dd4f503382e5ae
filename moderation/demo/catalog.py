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

Long-form items (issue 13): a few episodes and audiobook chapters whose transcript runs to
several thousand words (generated talk, the show's intro and ad read repeated in every episode
of a show), every other one with a passage of held-out labelled posts planted deep inside (about
word 5,000; ``plant_passage`` says why a passage and not one post), and a couple of episodes whose
audio is 8 minutes of espeak-ng speech, one with such a passage spoken from minute 6 and one over
a shared music bed. ``planted_start``/``planted_end``/``planted_unit`` say where each
plant lies (character offsets into the normalised ``body_text``, or seconds into the clip), in
the units ``violations.evidence_start``/``evidence_end``/``evidence_unit`` use.
``long_transcript`` and ``long_speech_clip`` build such items for tests and benchmarks.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from moderation.evaluation.sources import LabelledText, read_hatexplain, read_youtube_spam
from moderation.schemas import DEMO_CATALOG_SCHEMA

#: The demo catalog's schema (defined with the other tables in ``moderation.schemas``).
DEMO_SCHEMA = DEMO_CATALOG_SCHEMA

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


@functools.lru_cache(maxsize=4)
def _music_bed(music: str):
    """``music`` decoded to 16 kHz mono once per process: a demo mixes dozens of clips over the
    same few tracks, and decoding a whole track was most of the demo catalog's build time."""
    from faster_whisper import decode_audio

    bed = decode_audio(music)
    bed.flags.writeable = False  # shared between callers
    return bed


def mix_over_music(speech_wav: Path, music: str, out: Path, *, music_gain: float = 0.3) -> None:
    """``speech_wav`` spoken over the start of ``music`` (looped if shorter), 16 kHz mono WAV:
    the way lyrics or a voice-over sit on a track."""
    import wave

    import numpy as np
    from faster_whisper import decode_audio  # PyAV: any container, resampled to 16 kHz mono

    speech = decode_audio(str(speech_wav))
    bed = _music_bed(music)
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


# ---- long-form items (issue 13) ---------------------------------------------------------------

#: Words of the long transcripts the demo builds (a 20- to 60-minute episode), the word and the
#: second at which a plant starts, and the length of the long speech clips.
LONG_FORM_WORDS = (3_000, 9_000)
PLANT_AT_WORD = 5_000
LONG_CLIP_SECONDS = 480.0
PLANT_AT_SECONDS = 360.0
#: Instrumental shared clips that may lie under a long speech clip (the others are speech, song
#: or animal sounds).
MUSIC_BEDS = ("Kevin_MacLeod_-_Vibe_Ace.ogg",
              "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).ogg")

#: What long-form talk is made of. Chosen with the spam head in mind, which reads casual
#: first-person talk about some topics (astronomy, jazz records, "the best advice I ever got")
#: as promotion: windows of these sentences score at most 0.3 for spam (0.94 with those).
_SHOW_TOPICS = ["gardening", "city history", "long-distance running", "home cooking", "local politics",
                "startup life", "woodworking", "folk music", "old railways", "beekeeping"]
_PEOPLE = ["my grandmother", "our guest", "the old captain", "Maria", "my co-host", "a neighbour of mine", "Tom",
           "the head gardener", "the librarian", "her brother", "the baker on our street", "the ferryman"]
_PLACES = ["Lisbon", "a small town in Ohio", "the coast", "the mountains", "the city market", "Osaka",
           "a farm near the river", "the train station", "an old bookshop", "the harbour", "a village in Wales",
           "the valley"]
_THINGS = ["piano", "bicycle", "kettle", "old map", "garden shed", "sailing boat", "radio", "recipe book",
           "wooden table", "sourdough starter", "rowing boat", "woollen coat"]
_WHEN = ["last spring", "in the winter of 1998", "on a Tuesday morning", "after the harvest", "every summer",
         "years ago", "during the long school holidays", "the week before the festival"]
_TALK = [
    "I remember the first time {person} tried {topic} {when}.",
    "in the next chapter the family moves to {place} and opens a small shop.",
    "we got a lot of letters about {topic} after last week's episode.",
    "the morning light came through the window while {person} made coffee.",
    "let's take a listener question about {topic} from {place}.",
    "{person} laughed and said the {thing} had been in the family for {n} years.",
    "so we packed the {thing} into the car and drove to {place} {when}.",
    "she opened the letter slowly and read it twice before she said anything.",
    "the rain had stopped by the time they reached {place}.",
    "honestly, I think {topic} is one of the most underrated hobbies there is.",
    "{person} still keeps the {thing} by the front door.",
    "{person} drew a map of {place} on the back of an envelope.",
    "by the end of the evening everyone at the table was talking about {topic}.",
    "the house in {place} was quiet except for the ticking of the clock.",
    "{person} carried the {thing} up the hill, one slow step at a time.",
    "nobody in {place} had seen snow like that for {n} years.",
    "{person} wrote everything down in a small blue notebook.",
    "he folded the map, put it in his pocket and walked towards {place}.",
    "there was a long pause before {person} answered the question.",
    "the garden behind the house in {place} was full of apple trees.",
    "our guest grew up in {place} and still goes back {when}.",
]


@dataclass(frozen=True)
class Show:
    """A podcast or audiobook series: each episode opens with the same intro and repeats the same
    ad read at every break, as real long-form catalogs do."""

    title: str
    item_type: str  # episode | audiobook
    topic: str
    creator_id: str
    intro: str
    ad_read: str


@dataclass(frozen=True)
class LongText:
    """A long transcript, already normalised (``normalize_text(text) == text``), and where its
    plant lies: ``text[planted_start:planted_end]`` is the planted text (None: no plant)."""

    text: str
    words: int  # whitespace-separated words, the plant's included
    planted_start: int | None = None
    planted_end: int | None = None


@dataclass(frozen=True)
class LongClip:
    """A long speech clip written to ``path``; the plant is spoken in [planted_start, planted_end)
    seconds (None: no plant)."""

    path: Path
    seconds: float
    planted_start: float | None = None
    planted_end: float | None = None


def talk_sentence(rng: random.Random, topic: str | None = None) -> str:
    """One sentence of benign podcast or audiobook talk."""
    return rng.choice(_TALK).format(person=rng.choice(_PEOPLE), place=rng.choice(_PLACES), thing=rng.choice(_THINGS),
                                    when=rng.choice(_WHEN), topic=topic or rng.choice(_SHOW_TOPICS),
                                    n=rng.randint(2, 40))


def make_show(rng: random.Random, *, item_type: str = "episode") -> Show:
    """A podcast (``episode``) or audiobook series with its own title, topic, creator, intro and
    ad read (about 40 and 50 words)."""
    kind = "Hour" if item_type == "episode" else "Chronicles"
    title, topic = f"The {_title(rng)} {kind}", rng.choice(_SHOW_TOPICS)
    if item_type == "episode":
        intro = (f"hello and welcome to {title}, the show about {topic} and the people who love it. I am your host, "
                 f"and every week we sit down with someone who has a story to tell. grab a cup of tea, get "
                 f"comfortable, and let's begin.")
    else:
        intro = (f"this is {title}, a story about {topic} and the people who love it, read aloud. settle into "
                 f"your favourite chair, and let's pick up where we left off last time.")
    # Host-read support for the show, not spam; worded so that the spam head agrees (a discount
    # code or a link scores 0.9 there, which would put every episode in review).
    ad_read = (f"a quick word from the people who make this show possible. the {_title(rng)} Bakery has been baking "
               f"bread on the same corner since {rng.randint(1950, 2010)}, and they have supported this show from "
               f"the very first episode. we are grateful to them. and now, back to the conversation.")
    return Show(title=title, item_type=item_type, topic=topic, creator_id=f"creator_{rng.randint(401, 500):04d}",
                intro=intro, ad_read=ad_read)


def long_transcript(
    rng: random.Random, *, words: int, show: Show | None = None, plant: str | None = None,
    at_word: int = PLANT_AT_WORD, ad_every: int = 1_500,
) -> LongText:
    """A transcript of ``words`` words of benign talk (plus the plant's words), normalised as the
    text classifiers read it.

    Args:
        rng: the source of every choice (same state, same transcript).
        words: words of the transcript without the plant.
        show: its intro opens the transcript and its ad read comes every ``ad_every`` words.
        plant: text planted as a sentence of its own, starting at the first sentence boundary at
            or after ``at_word`` words.
        at_word: where the plant goes.

    Returns:
        The text, its word count and the plant's character offsets in it.

    Raises:
        ValueError: ``at_word`` lies outside the transcript.
    """
    from moderation.classifiers.text import normalize_text

    if plant is not None and not 0 <= at_word < words:
        raise ValueError(f"at_word {at_word}: the plant must start inside the transcript's {words} words")
    plant = normalize_text(plant) if plant is not None else None
    topic = show.topic if show else None
    parts: list[str] = [show.intro] if show else []
    count = len(parts[0].split(" ")) if parts else 0
    next_ad = ad_every
    start = end = None
    chars = len(parts[0]) + 1 if parts else 0
    while count < words:
        if plant and start is None and count >= at_word:
            start, end = chars, chars + len(plant)
            parts.append(plant)
            chars = end + 1
        if show and count >= next_ad:
            sentence, next_ad = show.ad_read, next_ad + ad_every
        else:
            sentence = talk_sentence(rng, topic if rng.random() < 0.4 else None)
        have = sentence.split(" ")
        if count + len(have) > words:  # the last sentence, cut to the exact length
            sentence = " ".join(have[: words - count])
        parts.append(sentence)
        chars += len(sentence) + 1
        count += len(sentence.split(" "))
    if plant and start is None:  # the last sentence ran past at_word and the end at once
        start, end = chars, chars + len(plant)
        parts.append(plant)
    text = " ".join(parts)
    if start is not None:
        assert text[start:end] == plant and normalize_text(text) == text
    return LongText(text=text, words=len(text.split(" ")), planted_start=start, planted_end=end)


_PAUSE_S = 0.5  # silence before and after a spoken plant


def _espeak_pcm(text: str) -> np.ndarray:
    """espeak-ng's speech for ``text`` as 16 kHz mono float32 samples."""
    import io

    from faster_whisper import decode_audio  # PyAV: resampled to 16 kHz mono

    wav = subprocess.run([_ESPEAK or "espeak-ng", "-v", "en-us", "-s", "150", "--stdout"], input=text.encode("utf-8"),
                         check=True, capture_output=True, timeout=300).stdout
    return decode_audio(io.BytesIO(wav))


def _speech_for(rng: random.Random, seconds: float, topic: str | None) -> np.ndarray:
    """At most ``seconds`` of talk, cut at the last pause between words that fits."""
    pcm = np.zeros(0, np.float32)
    while pcm.size < seconds * 16_000:
        paragraph = " ".join(talk_sentence(rng, topic) for _ in range(12))
        pcm = np.concatenate([pcm, _espeak_pcm(paragraph)])
    # Pauses: runs of at least 100 ms of (near) silence; cut in the middle of the last that fits.
    frames = pcm[: pcm.size // 320 * 320].reshape(-1, 320)
    edges = np.diff(np.concatenate([[0], (np.sqrt((frames**2).mean(1)) < 1e-3).astype(np.int8), [0]]))
    runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    fits = [(a + b) // 2 * 320 for a, b in runs if b - a >= 5 and (a + b) // 2 * 320 <= seconds * 16_000]
    cut = fits[-1] if fits else 0
    return pcm[:cut]


def _trim(pcm: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm) > 1e-3)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm[:0]


def write_audio(pcm: np.ndarray, out: Path) -> None:
    """16 kHz mono float samples as ``out``: 16-bit WAV for ``.wav``, else Opus in Ogg (32 kbit/s,
    2 MB for 8 minutes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(pcm, -1.0, 1.0).astype(np.float32)
    if out.suffix == ".wav":
        import wave

        with wave.open(str(out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes((pcm * 32767).astype("<i2").tobytes())
        return
    import av

    with av.open(str(out), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=16_000, options={"compression_level": "5"})
        stream.layout, stream.bit_rate = "mono", 32_000
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="flt", layout="mono")
        frame.sample_rate = 16_000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def long_speech_clip(
    rng: random.Random, out: Path, *, seconds: float = LONG_CLIP_SECONDS, plant: str | None = None,
    at_seconds: float = PLANT_AT_SECONDS, music: str | None = None, music_gain: float = 0.1,
    topic: str | None = None,
) -> LongClip:
    """A clip of ``seconds`` of benign talk spoken by espeak-ng, with ``plant`` spoken from exactly
    ``at_seconds`` (half a second of silence on each side), optionally over ``music`` (looped) at
    ``music_gain``. Written as WAV for a ``.wav`` name, else Ogg Opus.

    Returns:
        The clip and the seconds in which the plant is spoken.

    Raises:
        ValueError: the plant does not fit between ``at_seconds`` and ``seconds``.
    """
    rate = 16_000
    pieces = []
    start: float | None = None
    end: float | None = None
    if plant:
        spoken = _trim(_espeak_pcm(plant))
        start, end = at_seconds, at_seconds + spoken.size / rate
        if at_seconds < _PAUSE_S or end + _PAUSE_S > seconds:
            raise ValueError(f"a plant of {spoken.size / rate:.1f}s at {at_seconds}s does not fit a {seconds}s clip")
        before = _speech_for(rng, at_seconds - _PAUSE_S, topic)
        pieces = [before, np.zeros(int(at_seconds * rate) - before.size, np.float32), spoken]
    talk = _speech_for(rng, seconds - (end + _PAUSE_S if end is not None else 0.0), topic)
    pause = np.zeros(int(_PAUSE_S * rate) if plant else 0, np.float32)
    pieces += [pause, talk]
    pcm = np.concatenate(pieces)
    pcm = np.concatenate([pcm, np.zeros(int(seconds * rate) - pcm.size, np.float32)])
    if music:
        from faster_whisper import decode_audio

        bed = decode_audio(music)
        bed = np.tile(bed, int(np.ceil(pcm.size / max(1, bed.size))))[: pcm.size]
        pcm = pcm + music_gain * bed
    write_audio(pcm, out)
    return LongClip(path=out, seconds=pcm.size / rate, planted_start=start, planted_end=end)


def _plantable(pool: list[LabelledText]) -> list[LabelledText]:
    """English held-out posts labelled with at least one category, each of 20 to 1,000 characters."""
    return [p for p in pool if p.language == "en" and any(p.categories.values()) and 20 <= len(p.text) <= 1_000]


_PLACEHOLDER = re.compile(r"<[a-z]+>")  # HateXplain's <user>, <number>, <url>: not spoken


def plant_passage(posts: list[LabelledText], *, min_words: int, spoken: bool = False) -> LabelledText:
    """``posts`` (one label) joined, as one passage, until it has at least ``min_words`` words.

    One short post alone is mostly planted in vain: each window the MiniLM heads score holds about
    95 words, embedded as the mean of its tokens, so a post is diluted by the talk around it.
    Measured on 200 held-out posts planted in benign talk, a post of under 15 words reached the
    review threshold of its category 1 % of the time, one of 15 to 50 words 9 %; passages of
    about 100 words reached it 100 % (hatespeech), 82 % (offensive) and 90 % (spam) of the time
    (40 of each).

    Raises:
        ValueError: no posts, or posts of more than one label.
    """
    if not posts or len({p.label for p in posts}) != 1:
        raise ValueError(f"a passage needs posts of one label, got {sorted({p.label for p in posts})}")
    used = _passage_posts(posts, min_words=min_words)
    texts = [" ".join(_PLACEHOLDER.sub(" ", p.text).split()) if spoken else p.text for p in used]
    first = used[0]
    text = " ".join(t if t[-1:] in ".!?" else f"{t}." for t in texts if t)
    return LabelledText(text, first.source, first.split, first.label, language=first.language,
                        categories={c: int(any(p.categories.get(c) for p in used)) for p in used for c in p.categories})


def _passage_posts(posts: list[LabelledText], *, min_words: int) -> list[LabelledText]:
    """The first posts (cycling) with at least ``min_words`` words between them."""
    used, words = [posts[0]], len(posts[0].text.split())
    while words < min_words:
        used.append(posts[len(used) % len(posts)])
        words += len(used[-1].text.split())
    return used


def _labelled_pool(data_dir: Path | None, rng: random.Random) -> tuple[list[LabelledText], bool]:
    if data_dir is not None and (data_dir / "text" / "hatexplain").is_dir():
        pool = read_hatexplain(data_dir, "validation") + read_hatexplain(data_dir, "test")
        pool += [r for r in read_youtube_spam(data_dir) if r.split == "test"]
        # Other languages: held-out rows only (the multilingual heads train on the rest).
        from moderation.evaluation.corpora import read_corpus

        for name in ("germeval2018", "offendes"):
            held = [r for r in read_corpus(data_dir, name) if r.split == "test"]
            pool += rng.sample(held, min(120, len(held)))
        return pool, True
    generated = [LabelledText(t, "generated", "demo", "spam", categories={"spam": 1}) for t in _SPAM_FAKE]
    generated += [LabelledText(f"{line} {rng.choice(_TOPIC)}", "generated", "demo", "normal", categories={})
                  for line in _LYRIC]
    return generated, False


def build_demo_table(
    *, items: int = 2000, data_dir: Path | None = None, seed: int = 7, media_dir: Path | None = None,
    cover_share: float = 1.0, audio_share: float = 1.0, long_form: int | None = None, long_audio: int | None = None,
) -> tuple[pa.Table, bool]:
    """The demo catalog as an Arrow table (DEMO_SCHEMA) and whether shared data was used.

    With ``media_dir``, media are generated there too: covers with planted labelled text
    rendered onto a shared photo (``planted_field = "cover_image"``), and altered copies of
    the BANKED_IMAGES (``source_label = "banked_copy"``). ``cover_share`` is the share of
    items that have cover art at all (scoring every cover on a laptop CPU takes a while).

    ``long_form`` items (None: one per 250 items) are episodes or audiobook chapters with a
    transcript of 3,000 to 9,000 words, every other one with a labelled post planted at about
    word 5,000. ``long_audio`` items (None: one per 1,000 items; only with ``media_dir`` and
    espeak-ng) are episodes with an 8-minute speech clip, every other one with a labelled post
    spoken from minute 6 (each costs about a minute of Whisper on 2 CPU cores). Both replace
    ordinary unplanted items, so the catalog keeps ``items`` rows, and with none of them the
    table is the one earlier versions built.
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
    n_banked = max(4, items // 200) if media_dir is not None and banked else 0
    n_labelled = min(len(pool), int(items * 0.8)) if used_shared else int(items * 0.3)
    types, weights = zip(*ITEM_TYPES, strict=True)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
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
            "planted_start": None,
            "planted_end": None,
            "planted_unit": None,
        }
        if i < n_empty:
            row.update(title="  ", description="", body_text=None)
        elif i < n_empty + n_banked:
            assert media_dir is not None  # n_banked is 0 without one
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
    # Long-form items replace the last ordinary (unplanted) rows, drawn from their own generator
    # so that every other row stays as it was.
    if (long_form or 0) < 0 or (long_audio or 0) < 0:
        raise ValueError(f"long_form ({long_form}) and long_audio ({long_audio}) must be >= 0 (or None: by size)")
    room = max(0, items - n_empty - max(n_banked, n_labelled))
    n_long = min(room, items // 250 if long_form is None else long_form)
    n_audio = min(room - n_long, items // 1_000 if long_audio is None else long_audio)
    if media_dir is None or not _ESPEAK:
        n_audio = 0
    if n_long or n_audio:
        beds = [c for c in clips if Path(c).name in MUSIC_BEDS]
        _long_form_rows(rows[items - n_long - n_audio :], texts=n_long, rng=random.Random(f"{seed}-long-form"),
                        plants=_plantable(pool[n_labelled:]) or _plantable(pool),
                        media_dir=media_dir, music=beds[0] if beds else None)
    rng.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=DEMO_SCHEMA), used_shared


def _long_form_rows(rows: list[dict], *, texts: int, rng: random.Random, plants: list[LabelledText],
                    media_dir: Path | None, music: str | None) -> None:
    """Turns ``rows`` into long-form items, in place: the first ``texts`` get long transcripts
    (shows of four episodes or chapters), the rest long speech clips (in ``media_dir``)."""
    by_label: dict[str, list[LabelledText]] = {}
    for post in plants:
        by_label.setdefault(post.label, []).append(post)
    labels = sorted(by_label)
    for posts in by_label.values():
        rng.shuffle(posts)
    taken = dict.fromkeys(labels, 0)
    show: Show | None = None
    for j, row in enumerate(rows):
        number = row["item_id"].partition("_")[2]
        audio = j >= texts
        k = j - texts if audio else j  # index among the rows of its kind
        if show is None or k % 4 == 0:
            show = make_show(rng, item_type="audiobook" if (k // 4) % 2 and not audio else "episode")
        episode = k % 4 + 1
        row.update(
            item_id=f"{'abk' if show.item_type == 'audiobook' else 'epi'}_{number}",
            item_type=show.item_type,
            title=f"{show.title}, {'chapter' if show.item_type == 'audiobook' else 'episode'} {episode}",
            description=f"{show.title}: {talk_sentence(rng, show.topic)}",
            language="en",
            creator_id=show.creator_id,
            explicit=False,
        )
        src = None
        if labels and k % 2 == 0:  # every other item of each kind, the labels in turn
            label = labels[(k // 2) % len(labels)]
            posts = [p for p in by_label[label] if len(p.text) <= 200] if audio else by_label[label]
            posts = posts or by_label[label]
            at = taken[label] % len(posts)
            # About 100 words of text (a window's worth), 60 spoken (20 s of a 30-s Whisper window).
            min_words = 60 if audio else 100
            used = _passage_posts(posts[at:] + posts[:at], min_words=min_words)
            src = plant_passage(used, min_words=min_words, spoken=audio)
            taken[label] += len(used)
        if audio:
            assert media_dir is not None
            clip = long_speech_clip(rng, media_dir / "audio" / f"{row['item_id']}.ogg", topic=show.topic,
                                    plant=src.text if src else None, music=None if src else music)
            row["audio_clip"] = str(clip.path.resolve())
            where = ("audio_clip", clip.planted_start, clip.planted_end, "seconds")
        else:
            words = rng.randint(6_000, LONG_FORM_WORDS[1]) if src else rng.randint(*LONG_FORM_WORDS)
            text = long_transcript(rng, words=words, show=show, plant=src.text if src else None,
                                   at_word=rng.randint(PLANT_AT_WORD - 200, PLANT_AT_WORD + 200))
            row["body_text"] = text.text
            where = ("body_text", text.planted_start, text.planted_end, "chars")
        if src is not None:
            field, start, end, unit = where
            assert start is not None and end is not None  # a plant was given: its place is known
            row.update(source_dataset=src.source, source_label=src.label, planted_field=field,
                       expected_categories=sorted(c for c, v in src.categories.items() if v),
                       planted_start=float(start), planted_end=float(end), planted_unit=unit)


def write_demo_catalog(
    uri: str, *, items: int = 2000, data_dir: Path | None = None, seed: int = 7, media_dir: Path | None = None,
    cover_share: float = 1.0, audio_share: float = 1.0, long_form: int | None = None, long_audio: int | None = None,
) -> DemoCatalog:
    """Write (or overwrite, as a new Delta version) the demo catalog at ``uri`` (see
    ``build_demo_table`` for the arguments)."""
    from moderation.storage.lake import overwrite_table

    table, used = build_demo_table(items=items, data_dir=data_dir, seed=seed, media_dir=media_dir,
                                   cover_share=cover_share, audio_share=audio_share, long_form=long_form,
                                   long_audio=long_audio)
    overwrite_table(uri, table)
    labels = table.column("source_label").to_pylist()
    planted: dict[str, int] = {}
    for label in labels:
        if label is not None:
            planted[label] = planted.get(label, 0) + 1
    bank = tuple(sorted(str((Path(data_dir) / "media" / "images" / n).resolve()) for n in BANKED_IMAGES)) \
        if media_dir is not None and data_dir is not None and (Path(data_dir) / "media" / "images").is_dir() else ()
    return DemoCatalog(uri=uri, items=table.num_rows, used_shared_data=used, planted=planted, bank_images=bank)
