from __future__ import annotations

from collections import Counter

from moderation.demo.catalog import DEMO_SCHEMA, build_demo_table


def test_demo_catalog_from_shared_data(data_dir):
    table, used = build_demo_table(items=2000, data_dir=data_dir)
    assert used and table.schema.equals(DEMO_SCHEMA) and table.num_rows == 2000
    rows = table.to_pylist()
    assert len({r["item_id"] for r in rows}) == 2000
    assert set(Counter(r["item_type"] for r in rows)) == {"track", "episode", "audiobook", "show"}
    labels = Counter(r["source_label"] for r in rows)
    assert labels["hatespeech"] > 100 and labels["offensive"] > 100 and labels["spam"] > 20
    # A planted text really is in the field the row says, and media point at shared files.
    for r in rows:
        if r["planted_field"]:
            assert r[r["planted_field"]]
    assert all(r["cover_image"].startswith(str(data_dir.resolve())) for r in rows)
    assert sum(1 for r in rows if not (r["title"] or "").strip() and not r["description"] and not r["body_text"]) == 20
    assert {r["language"] for r in rows} == {"en", "de", "es"}
    # Long-form items (tests/demo/test_long_form.py): 8 transcripts of thousands of words, 4 with a
    # plant whose position is recorded; no audio ones without media_dir.
    assert sum(1 for r in rows if len((r["body_text"] or "").split()) >= 3_000) == 8
    assert Counter(r["planted_unit"] for r in rows) == {None: 1996, "chars": 4}
    assert all((r["planted_start"] is None) == (r["planted_unit"] is None) for r in rows)


def test_demo_falls_back_to_generated_text(tmp_path):
    table, used = build_demo_table(items=50, data_dir=None)
    assert not used and table.num_rows == 50
    assert set(table.column("source_dataset").drop_null().to_pylist()) == {"generated"}
    assert table.column("cover_image").null_count == 50


def test_demo_is_deterministic(data_dir):
    a, _ = build_demo_table(items=100, data_dir=data_dir, seed=3, long_form=2)
    b, _ = build_demo_table(items=100, data_dir=data_dir, seed=3, long_form=2)
    assert a.equals(b)


def test_demo_media_rendered_covers_and_banked_copies(data_dir, tmp_path):
    from PIL import Image

    table, _ = build_demo_table(items=400, data_dir=data_dir, media_dir=tmp_path, cover_share=0.5)
    rows = table.to_pylist()
    rendered = [r for r in rows if r["planted_field"] == "cover_image" and r["source_label"] != "banked_copy"]
    banked = [r for r in rows if r["source_label"] == "banked_copy"]
    assert rendered and len(banked) == 4
    for r in rendered + banked:
        assert r["cover_image"].startswith(str(tmp_path.resolve()))
        assert Image.open(r["cover_image"]).format == "JPEG"
    assert all(r["expected_categories"] == ["known_violating"] for r in banked)
    # Unaltered banked originals never appear as ordinary covers.
    assert not any(r["cover_image"] and r["cover_image"].endswith(("coffee.png", "chelsea.png")) for r in rows)
    assert 0.3 < sum(r["cover_image"] is not None for r in rows) / len(rows) < 0.7


def test_speech_mixed_over_music_is_still_heard(data_dir, tmp_path):
    import pyarrow as pa

    from moderation.classifiers.base import build_classifier
    from moderation.config import load_model_registry
    from moderation.demo.catalog import mix_over_music, speak
    from moderation.storage.catalog import to_work_rows

    wav = tmp_path / "spam.wav"
    speak("subscribe to my channel and win free gift cards, click the link now", wav)
    mixed = tmp_path / "mixed.wav"
    mix_over_music(wav, str(data_dir / "media" / "audio" / "Kevin_MacLeod_-_Vibe_Ace.ogg"), mixed)
    clf = build_classifier(load_model_registry()["audio-speech-text-v1"])
    clf.setup("cpu")
    rows = to_work_rows(pa.table({"item_id": ["m"], "item_type": ["track"], "audio_clip": [str(mixed)]}), "audio")
    out = clf.process_batch(clf.prepare(rows))
    assert out.column("qreason").to_pylist() == [None]
    scores, evidence = dict(out.column("category_scores")[0].as_py()), dict(out.column("evidence")[0].as_py())
    assert scores["spam"] > 0.5 and evidence["spam"].startswith("window ")
