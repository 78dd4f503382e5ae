"""One explicit Arrow schema per output table: the public contract analysts query, and the data
dictionary.

Never inferred from a batch. Columns evolve additively only. Every column carries its
description here, as Arrow field metadata ``{"comment": ...}`` (:func:`col`): it is written into
the Delta table's column comments (what Spark and Databricks show as the column comment) when a
table or column is created, ``moderation tables`` prints it, and the docs page
``docs/tables.md`` is generated from it (``docs/hooks/tables_ref.py``), so none of them can
drift. A column added without a description fails ``tests/test_schemas.py``.
"""

from __future__ import annotations

import pyarrow as pa

from moderation.modalities import TEXT_COLUMNS as TEXT_COLUMNS  # re-exported: its importers read it here

TS = pa.timestamp("us", tz="UTC")
STR_LIST = pa.list_(pa.string())
#: The cell value of a report or diff row whose item lists no market / has no language.
NO_MARKET = "none"
NO_LANGUAGE = "unknown"
#: The field metadata key of a column's description (Delta's, Spark's and Databricks' column comment).
COMMENT = "comment"


#: Columns that ``scores``, ``quarantine`` and ``removals`` share carry one description: DataFusion
#: (delta-rs' QueryBuilder, which the run accounting and the re-scan plan use) refuses a UNION of
#: columns whose field metadata differ when their nullability differs too ("Physical input schema
#: should be the same as the one converted from logical input schema"; DataFusion 50 in deltalake 1.6.6).
_RUN_ID = "the run that wrote the row (`runs.run_id`)"
_ITEM_ID = "catalog item id"
_MODALITY = "text, image or audio"
_MODEL_ID = "registry model id, e.g. `text-minilm-heads-v1`"
_CONTENT_HASH = (
    "SHA-256 of the content scored (or that could not be scored): text, the normalised title, description and "
    "body text; cover art and audio, the file's bytes (of the URI when it cannot be read). A re-scan compares it "
    "to find changed pairs and does not retry unchanged quarantined input (null in quarantine rows without an "
    "id, and in quarantine rows written before it existed)")


def col(name: str, type_: pa.DataType, comment: str, *, nullable: bool = True) -> pa.Field:
    """A schema field with its description as the column comment."""
    return pa.field(name, type_, nullable=nullable, metadata={COMMENT: " ".join(comment.split())})


def description(field: pa.Field) -> str | None:
    """The description a field carries (``col``), or None."""
    raw = (field.metadata or {}).get(COMMENT.encode())
    return raw.decode() if raw is not None else None


#: The catalog fields the pipeline reads. Only item_id and at least one text field are
#: required; the others (item_type included) are null where a catalog lacks them.
CATALOG_SCHEMA = pa.schema(
    [
        col("item_id", pa.string(), "catalog item id (required)", nullable=False),
        col("item_type", pa.string(), "track, episode, audiobook, show"),
        col("title", pa.string(), "the item's title (text)"),
        col("description", pa.string(), "the item's description (text)"),
        col("body_text", pa.string(), "lyrics (tracks) or transcript (episodes, books)"),
        col("language", pa.string(), "the item's language"),
        col("markets", STR_LIST, "markets the item is available in"),
        col("creator_id", pa.string(), "the creator (artist, show, author)"),
        # Added with issue 17 (analyst roll-ups); optional like the others.
        col("show_id", pa.string(), "the show an episode belongs to (optional)"),
        col("album_id", pa.string(), "the album a track belongs to (optional)"),
        col("explicit", pa.bool_(), "the catalog's explicit flag (policy exemptions use it)"),
        col("cover_image", pa.string(), "URI of the cover art"),
        col("audio_clip", pa.string(), "URI of an audio preview"),
        col("updated_at", TS, "when the catalog last changed the item"),
    ]
)
#: The demo catalog (``moderation.demo.catalog``, written at ``<lake>/catalog`` by ``moderation demo``):
#: the catalog columns, then where each planted text came from, for measuring what was found.
DEMO_CATALOG_SCHEMA = pa.schema(
    list(CATALOG_SCHEMA)
    + [
        col("source_dataset", pa.string(), "demo: the dataset the planted text came from; null if none"),
        col("source_label", pa.string(), "demo: the source's own label (e.g. `hatespeech`, `spam`)"),
        col("planted_field", pa.string(), "demo: where the text was planted: `title`, `description` or `body_text`"),
        col("expected_categories", STR_LIST, "demo: the categories the planted text is labelled with"),
        col("planted_start", pa.float64(),
            "demo: where a long-form item's plant starts, in `planted_unit` (chars into the normalised "
            "`body_text`, or seconds into `audio_clip`); null elsewhere"),
        col("planted_end", pa.float64(), "demo: where a long-form item's plant ends (exclusive), in `planted_unit`"),
        col("planted_unit", pa.string(), "demo: `chars` or `seconds`; null when the plant has no place"),
    ]
)
REQUIRED_CATALOG_COLUMNS = ("item_id",)

#: Scoring: one row per item x modality x model version x run.
SCORES_SCHEMA = pa.schema(
    [
        col("run_id", pa.string(), _RUN_ID, nullable=False),
        col("item_id", pa.string(), _ITEM_ID, nullable=False),
        col("item_type", pa.string(), "track, episode, audiobook, show (copied from the catalog)"),
        col("modality", pa.string(), _MODALITY, nullable=False),
        col("model_id", pa.string(), _MODEL_ID, nullable=False),
        col("model_digest", pa.string(), "SHA-256 over the model's artifact digests", nullable=False),
        col("content_hash", pa.string(), _CONTENT_HASH, nullable=False),
        col("category_scores", pa.map_(pa.string(), pa.float32()),
            'probability per category, e.g. `{"hate": 0.03, "harassment": 0.12, "spam": 0.01}`'),
        col("evidence", pa.map_(pa.string(), pa.string()),
            "per category, what gave the score: text segment (`title`, `description`, `body_text[2]`, with "
            "`@start-end` character offsets where a window names them), `cover_image`, `ocr:<text>`, "
            "`pdq:match:<label>:d=<n>`, `window <start>-<end>s: <transcript>`, `no_speech`; a cascade model adds "
            "the key `cascade`: `strong` (a segment went to the strong model) or `cheap`"),
        col("language", pa.string(), "catalog language (copied for slicing)"),
        col("markets", STR_LIST, "markets the item is available in (copied)"),
        col("explicit", pa.bool_(), "catalog explicit flag (used by policy exemptions)"),
        col("scored_at", TS, "when the chunk was committed", nullable=False),
        # Added with issue 13 (long-form content scored whole); null in older rows.
        col("units_total", pa.int64(),
            "text rows: words of the item's text (title, description and body together, after normalisation); "
            "audio rows: seconds of the clip (null when a clip's decoding failed before its length was known); "
            "null for cover art and rows written before coverage was recorded"),
        col("units_scored", pa.int64(), "of `units_total`, the words or seconds the model scored"),
        col("unit", pa.string(), "unit of `units_total` and `units_scored`: `words` or `seconds`"),
        col("coverage", pa.float32(), "units_scored / units_total (1.0 when the item was scored whole)"),
        col("coverage_reason", pa.string(),
            "why coverage is below 1: `limit_chars` (registry `max_field_chars`), `limit_words` (run profile "
            "`max_item_words`), `limit_seconds` (run profile `max_item_seconds`), `decode_error_after_s` (the "
            "clip stopped decoding part way; what decoded was scored), `legacy_windowing` (a run with "
            "`text_windowing: legacy`: at most six truncated segments, kept only to measure against), "
            "comma-joined; null when whole"),
        # Added with issue 17 (analyst roll-ups); null in older rows and where the catalog lacks the field.
        col("creator_id", pa.string(), "catalog creator id (copied for the report's roll-ups)"),
        col("show_id", pa.string(), "catalog show id of an episode (copied)"),
        col("album_id", pa.string(), "catalog album id of a track (copied)"),
    ]
)

#: One row per item x modality x run that could not be scored.
QUARANTINE_SCHEMA = pa.schema(
    [
        col("run_id", pa.string(), _RUN_ID, nullable=False),
        col("item_id", pa.string(), _ITEM_ID),
        col("modality", pa.string(), _MODALITY, nullable=False),
        col("model_id", pa.string(), _MODEL_ID),
        col("stage", pa.string(),
            "`catalog` (decided by the driver's scan of the ids), `preprocess` or `score`", nullable=False),
        col("reason", pa.string(),
            "reason code. Catalog: `missing_item_id` (null or blank id; `item_id` is null, one row per catalog "
            "row), `invalid_item_id` (id bytes are not UTF-8; `item_id` shows them with `\\x..` escapes), "
            "`duplicate_item_id` (the id is on several rows: none "
            "of them is scored, one quarantine row per id); any modality: `invalid_utf8` (an input field of "
            "that modality is not valid UTF-8; `detail` names the fields), `score_error` (the model failed on "
            "this row after the in-run retries; `detail` starts with the attempts; a rescan retries it); text: "
            "`no_usable_text` (title, description and body empty after normalisation); image: the `image_*` "
            "codes (incl. `image_outside_roots`) and `ocr_failed`; audio: the `audio_*` codes (incl. "
            "`audio_outside_roots`)", nullable=False),
        col("detail", pa.string(), "human-readable detail (which fields were null, the exception)"),
        col("quarantined_at", TS, "when the chunk was committed", nullable=False),
        # Added with issue 5 (older rows: null).
        col("content_hash", pa.string(), _CONTENT_HASH),
    ]
)

#: One row per policy x version x item x category (x market scope) the policy flags.
VIOLATIONS_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), "policy", nullable=False),
        col("policy_version", pa.int32(), "policy version", nullable=False),
        col("policy_status", pa.string(),
            "the version's effective status (draft, shadow, live, retired): set by decide, rewritten by "
            "`policy promote` for the promoted and the replaced version. Only live rows reach `enforcement`"),
        col("item_id", pa.string(), "catalog item id", nullable=False),
        col("item_type", pa.string(), "item type (from the scores)"),
        col("language", pa.string(), "item language (from the scores)"),
        col("markets", STR_LIST, "the item's markets (from the scores)"),
        col("market_scope", pa.string(),
            "which rule decided the row: `*` the category's global rule (the item's markets without an "
            "override of their own), or a market code for that market's override", nullable=False),
        # Added with issue 5; reports and the enforcement export count by it.
        col("scope_markets", STR_LIST,
            "the concrete markets the row applies to: `[market_scope]` for a market row; for `*`, the item's "
            "markets without an override for the category (null when the item lists none; null in rows "
            "written before it existed)"),
        col("category", pa.string(), "policy category", nullable=False),
        col("score", pa.float32(), "item-level score (max over the counted modalities)", nullable=False),
        col("threshold", pa.float32(), "the threshold crossed (the review threshold for `review` rows)",
            nullable=False),
        col("decision", pa.string(), "`violation` (score >= threshold) or `review` (in the review band)",
            nullable=False),
        col("action", pa.string(), "the rule's action for violations; `human_review` for reviews", nullable=False),
        col("severity", pa.string(), "the rule's severity", nullable=False),
        col("evidence_modalities", STR_LIST, "modalities whose score reached the band"),
        col("model_refs", STR_LIST, "`model_id@digest12` of the scores used"),
        col("run_id", pa.string(), "decide run that wrote the row", nullable=False),
        col("decided_at", TS, "decide time", nullable=False),
        # Added with issue 13 (long-form content scored whole); null in rows decided before.
        col("evidence", pa.string(),
            "the `scores.evidence` of the row that gave the score (the highest among the item's counted rows; "
            "the newest on a tie) for the category, e.g. `body_text[3]@1520-2310`, "
            "`window 360.0-390.0s: <transcript>`, `ocr:<text>` (null in rows decided before it existed)"),
        col("evidence_start", pa.float64(),
            "start of the position that evidence names, [start, end): a character offset in the named field's "
            "normalised text (`chars`), or seconds from the start of the audio (`seconds`); null when it names "
            "none (a title or description read in one window, cover art, `no_speech`, rows scored before "
            "windows carried offsets)"),
        col("evidence_end", pa.float64(), "end of that position (exclusive), in `evidence_unit`"),
        col("evidence_unit", pa.string(), "`chars` or `seconds` (null with `evidence_start`)"),
        col("coverage", pa.float32(),
            "`scores.coverage` of that row: a violation found on an item its model read only in part says so "
            "(null where the model records no coverage: cover art, rows scored before coverage was recorded)"),
        col("coverage_reason", pa.string(), "`scores.coverage_reason` of that row: why it was read only in part"),
    ]
)
VIOLATIONS_PARTITIONS = ["policy_id", "policy_version"]

#: One row per run, upserted on run_id.
RUNS_SCHEMA = pa.schema(
    [
        col("run_id", pa.string(), "run id (`backfill-<utc>-<rand>` unless given)", nullable=False),
        col("kind", pa.string(),
            "`backfill`, `rescan`, `decide`, `diff`, `promote`, `enforce`, `labels_import`, `review_queue`, "
            "`report`",
            nullable=False),
        col("status", pa.string(),
            "`running`, `succeeded`, `failed`; `blocked`: the evaluation gate refused the run before it wrote "
            "anything", nullable=False),
        col("catalog_uri", pa.string(), "catalog read (backfill, rescan)"),
        col("catalog_version", pa.int64(), "Delta version of the catalog that was read (null for plain Parquet)"),
        col("where_expr", pa.string(), "the selection's `--where`"),
        col("item_limit", pa.int64(), "the selection's `--limit`"),
        col("policy_id", pa.string(), "policy"),
        col("policy_version", pa.int32(), "policy version"),
        col("policy_hash", pa.string(), "SHA-256 of the policy version's file"),
        col("model_ids", STR_LIST, "models used"),
        col("model_digests", STR_LIST, "digests of the models used"),
        col("modalities", STR_LIST, "modalities scored (backfill) or decided (decide)"),
        col("categories", STR_LIST, "the policy version's categories (decide)"),
        col("selected_pairs", pa.int64(), "accounting (backfill, rescan): (item, modality, model) pairs selected"),
        col("scored_pairs", pa.int64(), "accounting: pairs written to `scores`"),
        col("quarantined_pairs", pa.int64(), "accounting: pairs written to `quarantine`"),
        col("violation_rows", pa.int64(), "rows written to `violations` (decide)"),
        col("chunks_committed", pa.int64(), "chunks committed by the last invocation of the run"),
        col("scores_version", pa.int64(), "Delta version of `scores` a decide read"),
        col("hash_bank_version", pa.int64(), "Delta version of `hash_bank` a backfill matched covers against"),
        col("catalog_columns", STR_LIST,
            "the catalog column mapping used, as `field=column` (a resume reuses it)"),
        col("media_roots", STR_LIST, "the folders / `s3://` prefixes media URIs were confined to"),
        col("config_hash", pa.string(), "SHA-256 of the resolved policy, run profile and model entries"),
        col("code_version", pa.string(), "package version + git commit (`+dirty` if modified)"),
        col("started_at", TS, "when the run started"),
        col("ended_at", TS, "when the run ended"),
        col("error", pa.string(), "why a run failed"),
        # Added with issue 5 (policy lifecycle); null in older rows.
        col("policy_path", pa.string(), "the policy file as given (its content: `policy_hash`)"),
        col("change_source", pa.string(), "rescan: `cdf` or `anti_join`"),
        col("baseline_run_id", pa.string(),
            "rescan: the successful full run it compared with (the change data feed starts after its catalog "
            "version)"),
        col("baseline_versions", STR_LIST,
            "`table=version` of the lake tables compared with (rescan: `scores`, `quarantine`, `removals`; "
            "diff / enforce: `violations`; report: every table it read, as `reports/snapshot`)"),
        col("unchanged_pairs", pa.int64(), "rescan: pairs skipped as unchanged"),
        col("removed_pairs", pa.int64(), "rescan: pairs written to `removals`"),
        col("retired_rows", pa.int64(),
            "decide: rows of the version's previous decide that are gone because their item's pairs were removed"),
        col("from_version", pa.int32(), "diff: the version compared from; promote: the version that was live before"),
        col("diff_rows", pa.int64(), "diff: rows written to `diffs`"),
        col("enforcement_rows", pa.int64(), "enforce: rows the export holds for the policy"),
        col("forced", pa.bool_(),
            "promote: the decide / diff checks were overridden with `--force`; backfill / rescan: the "
            "evaluation gate's block was overridden with `--force`"),
        col("promoted_to", pa.string(), "promote: `live` or `shadow`"),
        # Added with issue 6 (evaluation gate); null in older rows.
        col("gate_status", pa.string(),
            "backfill / rescan: the evaluation gate's outcome: `passed`, `blocked`, `overridden`, "
            "`not_required` (the live version itself, or no live version), `not_configured` (no gate dataset "
            "in the lake)"),
        col("gate_detail", pa.string(),
            "backfill / rescan: JSON: the live version compared with, each comparison made, every drop beyond "
            "tolerance (dataset, category, slice, metric, live, candidate, tolerance), the missing evaluations "
            "as commands"),
        # Added with issue 12 (multilingual text); null in older rows and runs without a cascade.
        col("cascade", STR_LIST,
            "backfill / rescan with a cascade model (`kind: cascade_heads`): one JSON object per cascade: "
            "`model_id`, `cheap`, `strong`, `band_low` (per category), `band_high`, `pairs` it scored, "
            "`strong_pairs` the strong model re-scored, `strong_share`; counted from `scores` "
            "(`evidence['cascade']`) at the end of the run, so a resumed run counts every attempt"),
        # Added with issue 13; null in older rows.
        col("max_item_words", pa.int64(),
            "backfill / rescan: run profile limit: words of an item's text scored at most (default 200,000); an "
            "item beyond it is scored on its first words and its `scores` row records the coverage"),
        col("max_item_seconds", pa.int64(),
            "backfill / rescan: run profile limit: seconds of an item's audio scored at most (default 14,400); a "
            "longer clip is scored on its first seconds and its `scores` row records the coverage"),
        # Added with issue 15; null in older rows.
        col("max_error_share", pa.float64(),
            "backfill / rescan: run profile limit: the largest share of selected pairs quarantined as "
            "`score_error` for the run to succeed (default 0.01); null in runs before issue 15"),
        col("score_error_pairs", pa.int64(),
            "backfill / rescan: pairs quarantined as `score_error` (the model failed after the in-run retries)"),
    ]
)

_POLICY_ID = "policy"
_POLICY_VERSION = "policy version"

#: Report table written by the Spark job: one row per policy version x category x item type x
#: market x language among the items the decide run covered.
VIOLATION_RATES_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("category", pa.string(), "policy category"),
        col("item_type", pa.string(), "item type"),
        col("market", pa.string(), "market (items are exploded over their markets); `none`: the item lists none"),
        col("language", pa.string(), "item language; `unknown` when missing"),
        col("items", pa.int64(), "distinct items the latest decide of that version covered in the cell"),
        col("violations", pa.int64(),
            "distinct items flagged `violation` in the cell (a row counts only in the markets of its "
            "`scope_markets`)"),
        col("reviews", pa.int64(), "distinct items flagged `review` in the cell"),
        col("violation_rate", pa.float64(), "violations / items"),
    ]
)

#: Report table: distinct items per policy version x category x decision x action.
VIOLATIONS_BY_CATEGORY_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("category", pa.string(), "policy category"),
        col("decision", pa.string(), "`violation` or `review`"),
        col("action", pa.string(), "the rule's action (`human_review` for reviews)"),
        col("items", pa.int64(), "distinct items"),
    ]
)

#: Per policy version x category over the whole population (what ``ReportResult.summary`` shows; not written).
CATEGORY_TOTALS_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("category", pa.string(), "policy category"),
        col("items", pa.int64(), "distinct covered items of the policy version"),
        col("violations", pa.int64(), "distinct items flagged `violation`"),
        col("reviews", pa.int64(), "distinct items flagged `review`"),
    ]
)

#: Report table: what share of the items each decide covered its models read, per policy version x
#: item type x modality x model (from each (item, modality, model)'s newest live scores row in
#: the snapshot the decide read). Issue 13.
COVERAGE_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("item_type", pa.string(), "item type"),
        col("modality", pa.string(), "text, image or audio"),
        col("model_id", pa.string(), "the model"),
        col("items", pa.int64(), "items the model scored"),
        col("whole", pa.int64(), "items read whole: coverage 1.0 and no coverage_reason"),
        col("partial", pa.int64(), "items read in part: coverage below 1.0, or a coverage_reason"),
        col("unknown", pa.int64(),
            "items with no coverage recorded (cover art, audio, rows before issue 13); never counted as whole"),
        col("whole_share", pa.float64(), "whole / items"),
        col("mean_coverage", pa.float64(), "mean coverage over the items with coverage recorded; null: none"),
        col("partial_reasons", pa.map_(pa.string(), pa.int64()),
            "coverage_reason -> partial items (`limit_chars`, `limit_words`, ...); an item with several reasons "
            "counts under each"),
    ]
)

#: Report table: the Delta version of each lake table one report read (pinned once, before any
#: read, so every report table describes one consistent state of the lake). Issue 15.
REPORT_SNAPSHOT_SCHEMA = pa.schema(
    [
        col("table_name", pa.string(), "`runs`, `violations`, `scores`, `removals`, `diffs`, `labels`",
            nullable=False),
        col("version", pa.int64(), "the Delta version read; null: the table did not exist"),
        col("reported_at", TS, "when the versions were pinned", nullable=False),
    ]
)

#: Every issue-17 report table ends with this column: the lake versions the report read.
_LAKE_VERSIONS = (
    "the Delta version of each lake table the report read, pinned once before any read (as in "
    "`reports/snapshot`): `runs`, `violations`, `scores`, `removals`, `diffs`, `labels` -> version (null: the "
    "table did not exist). Each decide's population is read from the `scores` version it recorded "
    "(`runs.scores_version` of its `decide_run_id`)")
_SEVERITY = ("the worst `severity` of the entity's `violation` rows (`low` < `medium` < `high` < `critical`); "
             "null when none is flagged")
_FLAGGED = "distinct items with a `violation` decision of the version's reported decide, in any category or market"
_DETECTION = (
    "`human_review`: the pinned `labels` table holds a review (any source, decision, market or policy) of the "
    "violation's item for its category; `automated`: it holds none (the decision rests on the models alone)")
_VERSIONS_TYPE = pa.map_(pa.string(), pa.int64())

#: Report table (issue 17): violation trend per policy version x category, by the date of the
#: version's reported decide.
VIOLATION_TREND_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("category", pa.string(), "policy category (every category of the decide, zero violations included)"),
        col("decide_date", pa.date32(),
            "UTC date the version's newest succeeded decide ended (`runs.ended_at`): the trend's x axis. The "
            "`violations` table keeps one decide per version (a decide replaces its version's rows), so the "
            "trend is across versions and their decide dates"),
        col("decide_run_id", pa.string(), "that decide run"),
        col("items", pa.int64(), "distinct items the decide covered"),
        col("violations", pa.int64(), "distinct items flagged `violation` for the category (in any market)"),
        col("reviews", pa.int64(), "distinct items flagged `review` for the category"),
        col("violation_rate", pa.float64(), "violations / items"),
        col("lake_versions", _VERSIONS_TYPE, _LAKE_VERSIONS),
    ]
)

#: Report table (issue 17): items rolled up to creator, show (episodes) and album (tracks).
ROLLUPS_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("level", pa.string(),
            "`creator` (every covered item, by `creator_id`), `show` (episodes and items with a `show_id`, by "
            "`show_id`), `album` (tracks and items with an `album_id`, by `album_id`). A level appears for a "
            "policy version only when at least one of its covered items carries that id (catalogs without "
            "`show_id` / `album_id`, and scores written before issue 17, carry none)"),
        col("entity_id", pa.string(),
            "the creator, show or album id; `unknown`: the level's items without one (scores rows written "
            "before the ids were carried, catalogs that lack the id for the item), rolled up together"),
        col("items", pa.int64(), "distinct covered items of the entity (ids from the item's newest live scores row)"),
        col("flagged_items", pa.int64(), _FLAGGED),
        col("review_items", pa.int64(), "distinct items with a `review` decision"),
        col("flagged_share", pa.float64(), "flagged_items / items"),
        col("worst_severity", pa.string(), _SEVERITY),
        col("lake_versions", _VERSIONS_TYPE, _LAKE_VERSIONS),
    ]
)

#: Report table (issue 17): the creators with the most flagged items per policy version.
BLAST_RADIUS_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("rank", pa.int32(),
            "1 = most flagged items; ties broken by the higher flagged share, then the creator id. Creators "
            "with no flagged item and items without a `creator_id` are not ranked; the report keeps the top 20"),
        col("creator_id", pa.string(), "the creator"),
        col("items", pa.int64(), "the creator's distinct covered items"),
        col("flagged_items", pa.int64(), _FLAGGED),
        col("flagged_share", pa.float64(), "flagged_items / items"),
        col("worst_severity", pa.string(), _SEVERITY),
        col("categories", STR_LIST, "the categories the creator's items are flagged `violation` for, sorted"),
        col("lake_versions", _VERSIONS_TYPE, _LAKE_VERSIONS),
    ]
)

#: Report table (issue 17): how violations were found, per policy version x category x modality
#: x model x review.
DETECTION_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("category", pa.string(), "policy category"),
        col("modality", pa.string(),
            "the modality of the model that gave evidence (the model's `scores.modality`, kept where it is in the "
            "row's `evidence_modalities`); `unknown`: the model has no scores row in the snapshots read"),
        col("model_id", pa.string(),
            "a model of the row's `model_refs` (`model_id@digest12`: the id); `unknown` for rows without refs"),
        col("review", pa.string(), _DETECTION),
        col("violations", pa.int64(),
            "distinct items flagged `violation` with evidence from that model (an item found by two models "
            "counts under each, so rows do not add up to the item total)"),
        col("lake_versions", _VERSIONS_TYPE, _LAKE_VERSIONS),
    ]
)

#: Report table (issue 17): counts in the shape transparency reports publish, small cells suppressed.
TRANSPARENCY_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("policy_version", pa.int32(), _POLICY_VERSION),
        col("market", pa.string(),
            "a market of the row's `scope_markets` (as `violation_rates` counts it); `none`: the item lists none"),
        col("category", pa.string(), "policy category"),
        col("action", pa.string(), "the rule's action (`remove`, `restrict`, `age_restrict`, `demote`, `label`)"),
        col("detection_method", pa.string(), _DETECTION),
        col("items", pa.int64(),
            "distinct items flagged `violation` in the cell; null when the cell is suppressed"),
        col("suppressed", pa.bool_(),
            "true when the cell's count is withheld (`suppression` says why). Cells with no item have no row"),
        col("suppression", pa.string(),
            "why the count is withheld: `small_cell` (1 to `min_cell_count` - 1 items, the usual protection of "
            "small cells in published transparency figures) or `complementary` (withheld so that a total per "
            "action, per detection method or of the market x category cannot give a small cell back by "
            "subtraction); null when published"),
        col("min_cell_count", pa.int64(), "k, `moderation report --min-cell-count` (default 10)"),
        col("lake_versions", _VERSIONS_TYPE, _LAKE_VERSIONS),
    ]
)

#: One row per (item, modality) pair a re-scan found gone from the catalog (the item deleted, or
#: its cover / audio URI removed). ``decide`` ignores scores of a pair older than its removal,
#: so the pair's violations are retired in the next decide.
REMOVALS_SCHEMA = pa.schema(
    [
        col("run_id", pa.string(), _RUN_ID, nullable=False),
        col("item_id", pa.string(), _ITEM_ID, nullable=False),
        col("modality", pa.string(), _MODALITY, nullable=False),
        col("reason", pa.string(),
            "`item_deleted` (the id is no longer in the catalog) or `media_removed` (the item is, its cover / "
            "audio URI is not)", nullable=False),
        col("catalog_uri", pa.string(), "the catalog where the pair is gone", nullable=False),
        col("catalog_version", pa.int64(), "the catalog's Delta version where the pair is gone"),
        col("removed_at", TS,
            "when it was recorded: `decide` and the report ignore scores of the pair with `scored_at` <= this "
            "(a pair scored again later counts again)", nullable=False),
    ]
)

#: ``moderation diff``: one row per item x category x market scope whose outcome differs
#: between two decided versions of one policy. Rows of one (policy, from, to) are replaced
#: together.
DIFFS_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID, nullable=False),
        col("from_version", pa.int32(), "the version compared from", nullable=False),
        col("to_version", pa.int32(), "the version compared to", nullable=False),
        col("item_id", pa.string(), "catalog item id", nullable=False),
        col("category", pa.string(), "policy category", nullable=False),
        col("market_scope", pa.string(),
            "`*` (the item's markets without an override of their own) or a market code", nullable=False),
        col("scope_markets", STR_LIST,
            "the markets the change applies to: the to-version row's `scope_markets`, else the from-version's "
            "(null: the item lists none)"),
        col("change", pa.string(),
            "`newly_violating`, `cleared`, `action_changed`, `newly_review`, `review_cleared`", nullable=False),
        col("from_decision", pa.string(), "`violation`, `review`, or null (the from-version does not flag the key)"),
        col("to_decision", pa.string(), "`violation`, `review`, or null (the to-version does not flag the key)"),
        col("from_action", pa.string(), "the action in the from-version (null where not flagged)"),
        col("to_action", pa.string(), "the action in the to-version (null where not flagged)"),
        col("from_score", pa.float32(), "the item-level score in the from-version's row (null where not flagged)"),
        col("to_score", pa.float32(), "the item-level score in the to-version's row (null where not flagged)"),
        col("item_type", pa.string(), "item type, from the to-version's row where there is one"),
        col("language", pa.string(), "item language, from the to-version's row where there is one"),
        col("markets", STR_LIST, "item markets, from the to-version's row where there is one"),
        col("from_run_id", pa.string(), "the decide run whose from-version rows were compared"),
        col("to_run_id", pa.string(), "the decide run whose to-version rows were compared"),
        col("run_id", pa.string(), "the diff run", nullable=False),
        col("diffed_at", TS, "when the diff ran", nullable=False),
    ]
)

#: ``moderation diff``: a stratified sample of changed rows (by category x change) for human
#: review before the new version is enforced.
DIFF_SAMPLES_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), "the diff's policy", nullable=False),
        col("from_version", pa.int32(), "the diff's from-version", nullable=False),
        col("to_version", pa.int32(), "the diff's to-version", nullable=False),
        col("stratum", pa.string(), "`<category>/<change>`", nullable=False),
        col("stratum_size", pa.int64(),
            "changed rows in the stratum (the sample holds min(size, per-stratum) of them)", nullable=False),
        col("sample_rank", pa.int32(), "0, 1, ... within the stratum", nullable=False),
        col("item_id", pa.string(), "the sampled `diffs` row's item", nullable=False),
        col("category", pa.string(), "the sampled `diffs` row's category", nullable=False),
        col("market_scope", pa.string(), "the sampled `diffs` row's market scope", nullable=False),
        col("change", pa.string(), "the sampled `diffs` row's change", nullable=False),
        col("from_score", pa.float32(), "as in `diffs`"),
        col("to_score", pa.float32(), "as in `diffs`"),
        col("item_type", pa.string(), "as in `diffs`"),
        col("language", pa.string(), "as in `diffs`"),
        col("run_id", pa.string(), "the diff run", nullable=False),
        col("sampled_at", TS, "when the diff ran", nullable=False),
    ]
)

#: ``moderation enforce``: the actions the live version of each policy takes, one row per
#: item x category x market, for downstream systems (change data feed enabled: consumers read
#: what changed since their last version).
ENFORCEMENT_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), "the policy", nullable=False),
        col("policy_version", pa.int32(), "its live version that decided the row", nullable=False),
        col("item_id", pa.string(), "catalog item", nullable=False),
        col("category", pa.string(), "policy category", nullable=False),
        col("market", pa.string(),
            'a market code, or `"*"` when the item lists no market. A `violations` row scoped to `M` gives '
            'market `M`; a `"*"` row gives one row per market the item lists that has no override for that '
            "category", nullable=False),
        col("action", pa.string(),
            "what to do in that market (`remove`, `restrict`, `age_restrict`, `demote`, `label`)", nullable=False),
        col("severity", pa.string(), "`low`, `medium`, `high` or `critical`", nullable=False),
        col("score", pa.float32(),
            "the item's score for the category (the maximum over the modalities the category counts)",
            nullable=False),
        col("threshold", pa.float32(), "the threshold that was crossed in that market", nullable=False),
        col("decide_run_id", pa.string(), "the decide run that produced the row", nullable=False),
        col("run_id", pa.string(), "the export run that last wrote the row", nullable=False),
        col("exported_at", TS, "when that export wrote it", nullable=False),
    ]
)

#: Report table: diff rows counted per policy x from x to x category x item type x market x
#: language x change (``market``: the scope's market, or each of the item's markets for "*").
DIFF_SUMMARY_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), _POLICY_ID),
        col("from_version", pa.int32(), "the version compared from"),
        col("to_version", pa.int32(), "the version compared to"),
        col("category", pa.string(), "policy category"),
        col("item_type", pa.string(), "item type"),
        col("market", pa.string(),
            "a market of the row's `scope_markets` (without one: the scope's market, or each of the item's "
            "markets for `*`); `none`: the item lists no market"),
        col("language", pa.string(), "item language; `unknown` when missing"),
        col("change", pa.string(), "the `diffs` change"),
        col("items", pa.int64(), "distinct items with that change in the cell"),
    ]
)

#: Distinct changed items per diff x change, for ``reporting.ReportResult.summary`` (not written).
DIFF_TOTALS_SCHEMA = pa.schema(
    [
        col("policy_id", pa.string(), "policy"),
        col("from_version", pa.int32(), "the version compared from"),
        col("to_version", pa.int32(), "the version compared to"),
        col("change", pa.string(), "the `diffs` change"),
        col("items", pa.int64(), "distinct items with that change"),
    ]
)

#: ``moderation evaluate``: one score per example x category for one model digest on one
#: dataset version (written once; later evaluations of the same pair reuse it).
EVAL_PREDICTIONS_SCHEMA = pa.schema(
    [
        col("model_id", pa.string(), "registry model id", nullable=False),
        col("model_digest", pa.string(), "the model's digest", nullable=False),
        col("dataset", pa.string(), "evaluation dataset name", nullable=False),
        col("dataset_version", pa.int64(), "the dataset's Delta version", nullable=False),
        col("example_id", pa.string(), "the example", nullable=False),
        col("category", pa.string(), "labelled category", nullable=False),
        col("score", pa.float64(), "the model's score; null: the example was quarantined (`quarantine_reason`)"),
        col("label", pa.int8(), "the example's label (1 violating, 0 not)", nullable=False),
        col("quarantine_reason", pa.string(), "why the model could not score the example"),
        col("code_version", pa.string(), "package version + git commit"),
        col("predicted_at", TS, "when the prediction was written", nullable=False),
        col("dataset_sha256", pa.string(),
            "the dataset version's content digest: a dataset deleted and imported again restarts at version 0, "
            "and its old predictions must not be reused"),
    ]
)

#: Bounds of a metric's 95% bootstrap interval.
_LO = "lower bound of the 95% bootstrap interval of `{}`"
_HI = "upper bound of the 95% bootstrap interval of `{}`"

#: ``moderation evaluate``: metrics per category, overall (slice_column null) and per slice
#: value, with bootstrap 95% intervals. Rows of one key (model digest, dataset version, policy
#: version and hash, code version) are replaced together.
EVAL_RESULTS_SCHEMA = pa.schema(
    [
        col("eval_id", pa.string(), "the `moderation evaluate` invocation", nullable=False),
        col("model_id", pa.string(), "registry model id", nullable=False),
        col("model_digest", pa.string(), "the model's digest", nullable=False),
        col("model_role", pa.string(), "`production` or `baseline`", nullable=False),
        col("dataset", pa.string(), "the evaluation dataset", nullable=False),
        col("dataset_version", pa.int64(), "its Delta version", nullable=False),
        col("policy_id", pa.string(), "where the thresholds came from (null: the default threshold 0.5)"),
        col("policy_version", pa.int32(), "that policy's version"),
        col("policy_hash", pa.string(), "SHA-256 of that policy version's file"),
        col("code_version", pa.string(), "package version + git commit", nullable=False),
        col("category", pa.string(), "category", nullable=False),
        col("slice_column", pa.string(), "null: all examples; else the slice column, e.g. `target_group`"),
        col("slice_value", pa.string(), "the slice's value, e.g. `Women` (null: all examples)"),
        col("n", pa.int64(), "examples", nullable=False),
        col("positives", pa.int64(), "positive labels", nullable=False),
        col("threshold", pa.float64(), "the policy's threshold for the category", nullable=False),
        col("pr_auc", pa.float64(), "average precision; null when the slice has one class"),
        col("pr_auc_lo", pa.float64(), _LO.format("pr_auc")),
        col("pr_auc_hi", pa.float64(), _HI.format("pr_auc")),
        col("roc_auc", pa.float64(), "ROC AUC; null when the slice has one class"),
        col("roc_auc_lo", pa.float64(), _LO.format("roc_auc")),
        col("roc_auc_hi", pa.float64(), _HI.format("roc_auc")),
        col("precision", pa.float64(), "precision at the threshold"),
        col("precision_lo", pa.float64(), _LO.format("precision")),
        col("precision_hi", pa.float64(), _HI.format("precision")),
        col("recall", pa.float64(), "recall at the threshold"),
        col("recall_lo", pa.float64(), _LO.format("recall")),
        col("recall_hi", pa.float64(), _HI.format("recall")),
        col("f1", pa.float64(), "F1 at the threshold"),
        col("f1_lo", pa.float64(), _LO.format("f1")),
        col("f1_hi", pa.float64(), _HI.format("f1")),
        col("fpr", pa.float64(), "false-positive rate at the threshold"),
        col("fpr_lo", pa.float64(), _LO.format("fpr")),
        col("fpr_hi", pa.float64(), _HI.format("fpr")),
        col("fpr_gap", pa.float64(),
            "slice rows: this slice's FPR minus the lowest FPR among the column's slices; all-examples rows: "
            "the widest gap over all columns"),
        col("target_precision", pa.float64(), "the precision target of `recall_at_precision`"),
        col("recall_at_precision", pa.float64(), "best recall with precision >= target"),
        col("ece", pa.float64(), "expected calibration error (10 equal-width bins)"),
        col("quarantined", pa.int64(), "examples the model could not score (excluded; all-examples rows)"),
        col("bootstrap_samples", pa.int32(), "resamples behind the intervals"),
        col("evaluated_at", TS, "when the evaluation ran", nullable=False),
    ]
)

#: Human review outcomes (moderator decisions, appeals), imported from CSV or Parquet.
LABELS_SCHEMA = pa.schema(
    [
        col("label_id", pa.string(),
            "SHA-256 of item, category, source, market, reviewed_at, decision", nullable=False),
        col("item_id", pa.string(), "catalog item id", nullable=False),
        col("category", pa.string(), "policy category", nullable=False),
        col("label", pa.int8(), "1 violating, 0 not", nullable=False),
        col("decision", pa.string(), "`violating`, `not_violating`, `upheld`, `overturned`", nullable=False),
        col("source", pa.string(), "`moderator` or `appeal`", nullable=False),
        col("market", pa.string(), "market the review applies to"),
        col("reviewer", pa.string(), "who reviewed"),
        col("policy_id", pa.string(), "the policy the review was made under"),
        col("policy_version", pa.int32(), "that policy's version"),
        col("reviewed_at", TS, "when the review was made", nullable=False),
        col("import_id", pa.string(), "the `moderation labels import` that wrote the row", nullable=False),
        col("source_file", pa.string(), "the imported file", nullable=False),
        col("source_sha256", pa.string(), "SHA-256 of the imported file", nullable=False),
        col("imported_at", TS, "when it was imported", nullable=False),
    ]
)

#: ``moderation review-queue``: items sampled for human review.
REVIEW_QUEUE_SCHEMA = pa.schema(
    [
        col("queue_id", pa.string(), "the sampling run", nullable=False),
        col("item_id", pa.string(), "catalog item id", nullable=False),
        col("category", pa.string(), "policy category", nullable=False),
        col("reason", pa.string(), "`uncertain` or `audit`", nullable=False),
        col("stratum", pa.string(), "`<category>/<slice>=<value>` or `audit`", nullable=False),
        col("stratum_size", pa.int64(), "candidates in the stratum before the cap", nullable=False),
        col("score", pa.float32(), "the item's score for the category"),
        col("threshold", pa.float32(), "the policy's threshold for the category"),
        col("policy_id", pa.string(), "policy", nullable=False),
        col("policy_version", pa.int32(), "policy version", nullable=False),
        col("model_id", pa.string(), "the model whose score was used"),
        col("item_type", pa.string(), "item type"),
        col("language", pa.string(), "item language"),
        col("markets", STR_LIST, "item markets"),
        col("queued_at", TS, "when the item was queued", nullable=False),
    ]
)

#: ``moderation bank add``: one row per banked image x crop variant (``moderation.storage.bank``).
HASH_BANK_SCHEMA = pa.schema(
    [
        col("hash", pa.string(), "PDQ perceptual hash, 64 lower-case hex characters", nullable=False),
        col("quality", pa.int32(), "PDQ quality (0-100); images below `--min-quality` are rejected", nullable=False),
        col("variant", pa.string(),
            "`full`, or a centred crop (`crop1.25` ... `crop5`, % cut per side): slightly cropped re-uploads "
            "match one of them", nullable=False),
        col("category", pa.string(), "policy category the image violates, e.g. `sexual`", nullable=False),
        col("label", pa.string(), "shown in `evidence` when a cover matches", nullable=False),
        col("source", pa.string(), "where the image came from (never the image itself)"),
        col("added_at", TS, "when it was added", nullable=False),
        col("added_by_run", pa.string(), "run or command that added it", nullable=False),
    ]
)

#: The tables the pipeline writes through :class:`moderation.storage.lake.Lake`, by path under the lake
#: root: the one list of them (``lake.TableName`` is a key; adding a table is one entry here, and
#: ``tests/test_architecture.py`` fails for a table the code writes that is missing).
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "scores": SCORES_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
    "violations": VIOLATIONS_SCHEMA,
    "runs": RUNS_SCHEMA,
    "removals": REMOVALS_SCHEMA,
    "diffs": DIFFS_SCHEMA,
    "diff_samples": DIFF_SAMPLES_SCHEMA,
    "enforcement": ENFORCEMENT_SCHEMA,
    "eval/predictions": EVAL_PREDICTIONS_SCHEMA,
    "eval/results": EVAL_RESULTS_SCHEMA,
    "labels": LABELS_SCHEMA,
    "review_queue": REVIEW_QUEUE_SCHEMA,
    "hash_bank": HASH_BANK_SCHEMA,
}

#: The issue-17 report tables, by name under ``reports/``, in the order they are written.
ANALYST_SCHEMAS: dict[str, pa.Schema] = {
    "violation_trend": VIOLATION_TREND_SCHEMA,
    "rollups": ROLLUPS_SCHEMA,
    "blast_radius": BLAST_RADIUS_SCHEMA,
    "detection": DETECTION_SCHEMA,
    "transparency": TRANSPARENCY_SCHEMA,
}

#: The report tables ``moderation report`` rewrites, by path under the lake root.
REPORT_SCHEMAS: dict[str, pa.Schema] = {
    "reports/violation_rates": VIOLATION_RATES_SCHEMA,
    "reports/violations_by_category": VIOLATIONS_BY_CATEGORY_SCHEMA,
    "reports/coverage": COVERAGE_SCHEMA,
    "reports/diff_summary": DIFF_SUMMARY_SCHEMA,
    "reports/snapshot": REPORT_SNAPSHOT_SCHEMA,
    **{f"reports/{name}": schema for name, schema in ANALYST_SCHEMAS.items()},
}

#: The data dictionary: every table with a fixed schema, by path under the lake root (the demo's
#: ``catalog`` included). ``moderation tables`` and docs/tables.md read it.
LAKE_SCHEMAS: dict[str, pa.Schema] = {
    **TABLE_SCHEMAS,
    **REPORT_SCHEMAS,
    "catalog": CATALOG_SCHEMA,
}

#: Evaluation datasets (``eval/datasets/<name>``) have columns per dataset: the fixed ones, and
#: ``label_<category>`` / ``slice_<name>`` (``moderation.evaluation.datasets``).
EVAL_DATASET_COLUMNS: dict[str, str] = {
    "example_id": "the example, unique within a version",
    "modality": "`text`, `image` or `audio`",
    "text": "the text of a text example (scored like a catalog item's `body_text`)",
    "title": "optional: catalog title, scored as the catalog scores it",
    "description": "optional: catalog description, scored as the catalog scores it",
    "media_uri": "image or audio examples: where the bytes are",
    "source": "where the example comes from (`hatexplain`, `labels`, a file name)",
    "label_*": "0/1 label of the category after `label_`; null = not annotated for that category",
    "slice_*": "a fairness slice (target group, language, dialect, ...): a value, or a list of values",
}


def column_description(table: str, column: str) -> str | None:
    """The description of ``column`` of the table at ``table`` (a path under the lake root), or None."""
    schema = LAKE_SCHEMAS.get(table)
    if schema is not None:
        index = schema.get_field_index(column)
        return description(schema.field(index)) if index >= 0 else None
    if table.startswith("eval/datasets/"):
        for prefix in ("label_", "slice_"):
            if column.startswith(prefix):
                return EVAL_DATASET_COLUMNS[prefix + "*"]
        return EVAL_DATASET_COLUMNS.get(column)
    return None


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
