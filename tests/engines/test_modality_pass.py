"""One pass per modality (issue 16 point 2), without Ray: the pipeline's read and prepare stages
run in this process over a real Delta catalog of real covers, for the three image models of
policy v3. Each cover is read and decoded once for all of them, and each model gets exactly the
rows its own selection streams (a re-scan's selections differ per model)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import write_deltalake

import moderation.engines.ray as pipeline
import moderation.storage.media as media
from moderation.classifiers.base import QREASON, RunContext
from moderation.config import load_model_registry
from moderation.scoring.selection import plan_selection
from moderation.storage.catalog import open_catalog

IMAGE_MODELS = ("image-open-nsfw-v1", "image-ocr-text-v1", "image-pdq-bank-v1")


@pytest.fixture
def covers(data_dir, tmp_path):
    images = sorted(str(p) for p in (data_dir / "media" / "images").iterdir())[:4]
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    uris = [*images, str(tmp_path / "junk.jpg"), None]
    catalog = str(tmp_path / "catalog")
    write_deltalake(catalog, pa.table({
        "item_id": [f"it{k}" for k in range(len(uris))], "item_type": ["track"] * len(uris),
        "title": ["a song"] * len(uris), "cover_image": pa.array(uris, pa.string()),
    }))
    roots = (str(data_dir / "media"), str(tmp_path))
    return open_catalog(catalog), RunContext(media_roots=roots)


def _pass(snapshot, selections, skip=None):
    registry = load_model_registry()
    models = tuple(registry[m] for m in IMAGE_MODELS)
    return pipeline.ModalityPass(run_id="r", lake_root="unused", modality="image", models=models,
                                 selections={m.model_id: selections.get(m.model_id, selections["*"]) for m in models},
                                 skip_ids=skip or {})


def _prepared(snapshot, pass_, context):
    parts = [pipeline.prepare_batch(rows, pass_=pass_, context=context)
             for rows in pipeline.read_files({"index": [0]}, snapshot=snapshot, pass_=pass_, batch_rows=256)]
    return pa.concat_tables(parts, promote_options="permissive")


def test_each_cover_is_read_and_decoded_once_for_all_image_models(covers, monkeypatch):
    snapshot, context = covers
    reads, decodes = Counter(), Counter()
    real_read, real_decode = media._read, media.decode_image

    def read(uri, **kw):
        reads[uri] += 1
        return real_read(uri, **kw)

    def decode(data, *, uri, max_pixels):
        decodes[uri] += 1
        return real_decode(data, uri=uri, max_pixels=max_pixels)

    monkeypatch.setattr(media, "_read", read)
    monkeypatch.setattr(media, "decode_image", decode)
    selection = plan_selection(snapshot, ["image"])
    out = _prepared(snapshot, _pass(snapshot, {"*": selection}), context)
    # 5 items with a cover URI, 3 models each; the junk file is quarantined by all three.
    assert Counter(out.column("model_id").to_pylist()) == {m: 5 for m in IMAGE_MODELS}
    junk = out.filter(pc.equal(out.column("item_id"), "it4"))
    assert junk.column(QREASON).to_pylist() == ["image_undecodable"] * 3
    assert set(reads.values()) == {1} and len(reads) == 5
    assert set(decodes.values()) == {1} and len(decodes) == 5
    # Outside a pass each classifier reads and decodes on its own (what the pass saves).
    reads.clear()
    for spec in _pass(snapshot, {"*": selection}).models:
        from moderation.classifiers.base import build_classifier
        from moderation.storage.catalog import to_work_rows

        rows = next(snapshot.read(snapshot.files[0], snapshot.columns, batch_rows=256)).slice(0, 1)
        build_classifier(spec, context=context).prepare(to_work_rows(rows, "image"))
    assert sum(reads.values()) == 3


def test_each_model_gets_the_rows_of_its_own_selection_less_its_committed_ids(covers):
    snapshot, context = covers
    everything = plan_selection(snapshot, ["image"])
    two = plan_selection(snapshot, ["image"], keep_ids=pa.array(["it0", "it1"]))
    pass_ = _pass(snapshot, {"image-pdq-bank-v1": two, "*": everything},
                  skip={"image-ocr-text-v1": pa.array(["it2", "it3"])})
    out = _prepared(snapshot, pass_, context)
    got = {m: sorted(out.filter(pc.equal(out.column("model_id"), m)).column("item_id").to_pylist())
           for m in IMAGE_MODELS}
    assert got == {"image-open-nsfw-v1": ["it0", "it1", "it2", "it3", "it4"],
                   "image-ocr-text-v1": ["it0", "it1", "it4"],
                   "image-pdq-bank-v1": ["it0", "it1"]}


def test_the_shared_cache_lives_only_inside_its_block(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    with media.shared_reads():
        assert media.read_media(str(path), max_bytes=10, kind="image") == b"abc"
        path.write_bytes(b"xyz")
        assert media.read_media(str(path), max_bytes=10, kind="image") == b"abc"  # the block's read
        with pytest.raises(media.MediaError, match="image_missing"):
            media.read_media(str(tmp_path / "none"), max_bytes=10, kind="image")
    assert media.read_media(str(path), max_bytes=10, kind="image") == b"xyz"
