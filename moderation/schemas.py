"""One explicit Arrow schema per output table: the public contract analysts query.

Never inferred from a batch. Columns evolve additively only; every column is documented in
the README ("Tables"). Changing a schema here without a README entry is a review blocker.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
STR_LIST = pa.list_(pa.string())

#: The catalog fields the pipeline reads. Only item_id and at least one text field are
#: required; the others (item_type included) are null where a catalog lacks them.
CATALOG_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_type", pa.string()),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("body_text", pa.string()),  # lyrics (tracks) or transcript (episodes, books)
        pa.field("language", pa.string()),
        pa.field("markets", STR_LIST),
        pa.field("creator_id", pa.string()),
        pa.field("explicit", pa.bool_()),
        pa.field("cover_image", pa.string()),  # URI of the cover art
        pa.field("audio_clip", pa.string()),  # URI of an audio preview
        pa.field("updated_at", TS),
    ]
)
REQUIRED_CATALOG_COLUMNS = ("item_id",)
TEXT_COLUMNS = ("title", "description", "body_text")

SCORES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_type", pa.string()),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_digest", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("category_scores", pa.map_(pa.string(), pa.float32())),
        pa.field("evidence", pa.map_(pa.string(), pa.string())),
        pa.field("language", pa.string()),
        pa.field("markets", STR_LIST),
        pa.field("explicit", pa.bool_()),
        pa.field("scored_at", TS, nullable=False),
        # Added with issue 13 (long-form content scored whole); null in older rows, and in rows
        # of models that do not record it (cover art). What share of the item the model read:
        # units_scored of units_total in `unit` (text: "words" of title, description and body
        # together, after normalisation; audio: "seconds" of the clip), coverage = units_scored /
        # units_total, and why not all of it: null when whole, else comma-joined "limit_chars" (a
        # field longer than the model's max_field_chars), "limit_words" (the run's
        # max_item_words), "legacy_windowing" (a run with text_windowing: legacy, which reads at
        # most six truncated segments), "limit_seconds" (the run's max_item_seconds) or
        # "decode_error_after_s" (the audio stopped decoding part way; what decoded was scored).
        pa.field("units_total", pa.int64()),
        pa.field("units_scored", pa.int64()),
        pa.field("unit", pa.string()),  # words | seconds
        pa.field("coverage", pa.float32()),
        pa.field("coverage_reason", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("model_id", pa.string()),  # the model whose input could not be prepared or scored
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("quarantined_at", TS, nullable=False),
        # What was quarantined (as in ``scores``), so a re-scan does not retry unchanged input;
        # null for rows with no usable item id. Added with issue 5 (older rows: null).
        pa.field("content_hash", pa.string()),
    ]
)

VIOLATIONS_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("policy_version", pa.int32(), nullable=False),
        pa.field("policy_status", pa.string()),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_type", pa.string()),
        pa.field("language", pa.string()),
        pa.field("markets", STR_LIST),
        pa.field("market_scope", pa.string(), nullable=False),
        # The markets the row applies to: [market_scope] for a market row; for "*", the item's
        # markets that have no override of their own for the category (null: the item lists
        # none). Added with issue 5; reports and the enforcement export count by it.
        pa.field("scope_markets", STR_LIST),
        pa.field("category", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("threshold", pa.float32(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # violation | review
        pa.field("action", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("evidence_modalities", STR_LIST),
        pa.field("model_refs", STR_LIST),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("decided_at", TS, nullable=False),
        # Added with issue 13 (long-form content scored whole); null in rows decided before.
        # Where the score came from: the ``evidence`` of the scores row that gave it (the
        # highest-scoring row among the item's rows for the category) for the category, e.g.
        # ``body_text[3]@1520-2310`` or ``window 360.0-390.0s: <transcript>``, and the position
        # it names: [evidence_start, evidence_end) in evidence_unit ``chars`` (offsets in the named
        # field's normalised text) or ``seconds`` (from the start of the audio); all three null
        # when the evidence names no position (a title or description read in one window, cover
        # art, rows scored before windows carried offsets).
        pa.field("evidence", pa.string()),
        pa.field("evidence_start", pa.float64()),
        pa.field("evidence_end", pa.float64()),
        pa.field("evidence_unit", pa.string()),  # chars | seconds
        # scores.coverage and scores.coverage_reason of that row: a violation found on an item
        # the model read only in part says so (null: not recorded, e.g. cover art, audio).
        pa.field("coverage", pa.float32()),
        pa.field("coverage_reason", pa.string()),
    ]
)
VIOLATIONS_PARTITIONS = ["policy_id", "policy_version"]

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # backfill | rescan | decide | diff | promote | enforce
        pa.field("status", pa.string(), nullable=False),  # running | succeeded | failed
        pa.field("catalog_uri", pa.string()),
        pa.field("catalog_version", pa.int64()),
        pa.field("where_expr", pa.string()),
        pa.field("item_limit", pa.int64()),
        pa.field("policy_id", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("policy_hash", pa.string()),
        pa.field("model_ids", STR_LIST),
        pa.field("model_digests", STR_LIST),
        pa.field("modalities", STR_LIST),
        pa.field("categories", STR_LIST),  # decide: the policy version's categories
        pa.field("selected_pairs", pa.int64()),
        pa.field("scored_pairs", pa.int64()),
        pa.field("quarantined_pairs", pa.int64()),
        pa.field("violation_rows", pa.int64()),
        pa.field("chunks_committed", pa.int64()),
        pa.field("scores_version", pa.int64()),
        pa.field("hash_bank_version", pa.int64()),  # hash_bank Delta version matched against
        pa.field("catalog_columns", STR_LIST),  # column mapping used, as "field=column"
        pa.field("media_roots", STR_LIST),  # the roots media URIs were confined to
        pa.field("config_hash", pa.string()),
        pa.field("code_version", pa.string()),
        pa.field("started_at", TS),
        pa.field("ended_at", TS),
        pa.field("error", pa.string()),
        # Added with issue 5 (policy lifecycle); null in older rows.
        pa.field("policy_path", pa.string()),  # the policy file as given (its hash: policy_hash)
        pa.field("change_source", pa.string()),  # rescan: cdf | anti_join
        pa.field("baseline_run_id", pa.string()),  # rescan: the last successful full run it compared with
        pa.field("baseline_versions", STR_LIST),  # rescan: "table=version" of the lake tables it compared with
        pa.field("unchanged_pairs", pa.int64()),  # rescan: pairs skipped as unchanged
        pa.field("removed_pairs", pa.int64()),  # rescan: pairs recorded in removals
        pa.field("retired_rows", pa.int64()),  # decide: rows of the previous decide dropped as removed
        pa.field("from_version", pa.int32()),  # diff: the version compared from; promote: the previous live one
        pa.field("diff_rows", pa.int64()),  # diff: rows written to diffs
        pa.field("enforcement_rows", pa.int64()),  # enforce: rows the export holds for the policy
        pa.field("forced", pa.bool_()),  # promote/backfill: a refused step was overridden with --force
        pa.field("promoted_to", pa.string()),  # promote: live | shadow
        # Added with issue 6 (evaluation gate); null in older rows.
        # backfill/rescan: passed | blocked | overridden | not_required | not_configured
        pa.field("gate_status", pa.string()),
        pa.field("gate_detail", pa.string()),  # JSON: what was compared, and each drop beyond tolerance
        # Added with issue 12 (multilingual text); null in older rows and runs without a cascade.
        # backfill/rescan: per cascade model, one JSON object: model_id, band (per-category
        # lower bounds, upper bound), pairs scored, pairs re-scored by the strong model, share.
        pa.field("cascade", STR_LIST),
        # Added with issue 13; null in older rows. backfill/rescan: the run profile's
        # max_item_words (words of an item's text scored at most).
        pa.field("max_item_words", pa.int64()),
        # backfill/rescan: the run profile's max_item_seconds (seconds of an item's audio scored at most).
        pa.field("max_item_seconds", pa.int64()),
        # Added with issue 15; null in older rows. backfill/rescan: the run profile's max_error_share
        # (above it, the share of score_error pairs fails the run) and the run's score_error pairs.
        pa.field("max_error_share", pa.float64()),
        pa.field("score_error_pairs", pa.int64()),
    ]
)

#: Report table written by the Spark job: one row per policy version x category x item type x
#: market x language among the items the decide run covered.
VIOLATION_RATES_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("category", pa.string()),
        pa.field("item_type", pa.string()),
        pa.field("market", pa.string()),
        pa.field("language", pa.string()),
        pa.field("items", pa.int64()),
        pa.field("violations", pa.int64()),
        pa.field("reviews", pa.int64()),
        pa.field("violation_rate", pa.float64()),
    ]
)

#: Report table: distinct items per policy version x category x decision x action.
VIOLATIONS_BY_CATEGORY_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("category", pa.string()),
        pa.field("decision", pa.string()),
        pa.field("action", pa.string()),
        pa.field("items", pa.int64()),
    ]
)

#: Per policy version x category over the whole population (what ``ReportResult.summary`` shows).
CATEGORY_TOTALS_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("category", pa.string()),
        pa.field("items", pa.int64()),
        pa.field("violations", pa.int64()),
        pa.field("reviews", pa.int64()),
    ]
)

#: Report table: what share of the items each decide covered its models read, per policy version x
#: item type x modality x model (from each (item, modality, model)'s newest live scores row in
#: the snapshot the decide read). Issue 13.
COVERAGE_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("item_type", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("items", pa.int64()),  # items the model scored
        pa.field("whole", pa.int64()),  # coverage 1.0 and no coverage_reason
        pa.field("partial", pa.int64()),  # coverage below 1.0, or a coverage_reason
        pa.field("unknown", pa.int64()),  # coverage not recorded (cover art, audio, rows before issue 13)
        pa.field("whole_share", pa.float64()),  # whole / items: an unknown item does not count as whole
        pa.field("mean_coverage", pa.float64()),  # over the items with coverage recorded; null: none
        # Partial items per coverage_reason value (limit_chars, limit_words, …); an item with
        # several reasons counts under each.
        pa.field("partial_reasons", pa.map_(pa.string(), pa.int64())),
    ]
)

#: Report table: the Delta version of each lake table one report read (pinned once, before any
#: read, so every report table describes one consistent state of the lake). Issue 15.
REPORT_SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("table_name", pa.string(), nullable=False),  # runs, violations, scores, removals, diffs
        pa.field("version", pa.int64()),  # the Delta version read; null: the table did not exist
        pa.field("reported_at", TS, nullable=False),  # when the versions were pinned
    ]
)

#: One row per (item, modality) pair a re-scan found gone from the catalog (the item deleted, or
#: its cover / audio URI removed). ``decide`` ignores scores of a pair older than its removal,
#: so the pair's violations are retired in the next decide.
REMOVALS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # item_deleted | media_removed
        pa.field("catalog_uri", pa.string(), nullable=False),
        pa.field("catalog_version", pa.int64()),  # the catalog version where the pair is gone
        pa.field("removed_at", TS, nullable=False),
    ]
)

#: ``moderation diff``: one row per item x category x market scope whose outcome differs
#: between two decided versions of one policy. Rows of one (policy, from, to) are replaced
#: together.
DIFFS_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("from_version", pa.int32(), nullable=False),
        pa.field("to_version", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("market_scope", pa.string(), nullable=False),
        # The markets the change applies to (violations.scope_markets of the to-version's row,
        # else the from-version's); null when neither has one (the item lists no markets).
        pa.field("scope_markets", STR_LIST),
        # newly_violating | cleared | action_changed | newly_review | review_cleared
        pa.field("change", pa.string(), nullable=False),
        pa.field("from_decision", pa.string()),  # violation | review | null (not flagged)
        pa.field("to_decision", pa.string()),
        pa.field("from_action", pa.string()),
        pa.field("to_action", pa.string()),
        pa.field("from_score", pa.float32()),
        pa.field("to_score", pa.float32()),
        pa.field("item_type", pa.string()),
        pa.field("language", pa.string()),
        pa.field("markets", STR_LIST),
        pa.field("from_run_id", pa.string()),  # the decide runs compared
        pa.field("to_run_id", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),  # the diff run
        pa.field("diffed_at", TS, nullable=False),
    ]
)

#: ``moderation diff``: a stratified sample of changed rows (by category x change) for human
#: review before the new version is enforced.
DIFF_SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("from_version", pa.int32(), nullable=False),
        pa.field("to_version", pa.int32(), nullable=False),
        pa.field("stratum", pa.string(), nullable=False),  # "<category>/<change>"
        pa.field("stratum_size", pa.int64(), nullable=False),  # changed rows in the stratum
        pa.field("sample_rank", pa.int32(), nullable=False),  # 0.. within the stratum
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("market_scope", pa.string(), nullable=False),
        pa.field("change", pa.string(), nullable=False),
        pa.field("from_score", pa.float32()),
        pa.field("to_score", pa.float32()),
        pa.field("item_type", pa.string()),
        pa.field("language", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("sampled_at", TS, nullable=False),
    ]
)

#: ``moderation enforce``: the actions the live version of each policy takes, one row per
#: item x category x market, for downstream systems (change data feed enabled: consumers read
#: what changed since their last version).
ENFORCEMENT_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("policy_version", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("market", pa.string(), nullable=False),  # a market code, or "*" (item lists none)
        pa.field("action", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("threshold", pa.float32(), nullable=False),
        pa.field("decide_run_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),  # the export run
        pa.field("exported_at", TS, nullable=False),
    ]
)

#: Report table: diff rows counted per policy x from x to x category x item type x market x
#: language x change (``market``: the scope's market, or each of the item's markets for "*").
DIFF_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("policy_id", pa.string()),
        pa.field("from_version", pa.int32()),
        pa.field("to_version", pa.int32()),
        pa.field("category", pa.string()),
        pa.field("item_type", pa.string()),
        pa.field("market", pa.string()),
        pa.field("language", pa.string()),
        pa.field("change", pa.string()),
        pa.field("items", pa.int64()),
    ]
)

#: ``moderation evaluate``: one score per example x category for one model digest on one
#: dataset version (written once; later evaluations of the same pair reuse it).
EVAL_PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_digest", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("dataset_version", pa.int64(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("score", pa.float64()),  # null: the example was quarantined (reason below)
        pa.field("label", pa.int8(), nullable=False),
        pa.field("quarantine_reason", pa.string()),
        pa.field("code_version", pa.string()),
        pa.field("predicted_at", TS, nullable=False),
        # The dataset version's content digest: a dataset deleted and imported again restarts at
        # version 0, and its old predictions must not be reused.
        pa.field("dataset_sha256", pa.string()),
    ]
)

#: ``moderation evaluate``: metrics per category, overall (slice_column null) and per slice
#: value, with bootstrap 95% intervals. Rows of one key (model digest, dataset version, policy
#: version and hash, code version) are replaced together.
EVAL_RESULTS_SCHEMA = pa.schema(
    [
        pa.field("eval_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_digest", pa.string(), nullable=False),
        pa.field("model_role", pa.string(), nullable=False),  # production | baseline
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("dataset_version", pa.int64(), nullable=False),
        pa.field("policy_id", pa.string()),  # null: evaluated at the default threshold 0.5
        pa.field("policy_version", pa.int32()),
        pa.field("policy_hash", pa.string()),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("slice_column", pa.string()),  # null: all examples
        pa.field("slice_value", pa.string()),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("positives", pa.int64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("pr_auc", pa.float64()),  # average precision; null when the slice has one class
        pa.field("pr_auc_lo", pa.float64()),
        pa.field("pr_auc_hi", pa.float64()),
        pa.field("roc_auc", pa.float64()),
        pa.field("roc_auc_lo", pa.float64()),
        pa.field("roc_auc_hi", pa.float64()),
        pa.field("precision", pa.float64()),  # at the threshold
        pa.field("precision_lo", pa.float64()),
        pa.field("precision_hi", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("recall_lo", pa.float64()),
        pa.field("recall_hi", pa.float64()),
        pa.field("f1", pa.float64()),
        pa.field("f1_lo", pa.float64()),
        pa.field("f1_hi", pa.float64()),
        pa.field("fpr", pa.float64()),  # false-positive rate at the threshold
        pa.field("fpr_lo", pa.float64()),
        pa.field("fpr_hi", pa.float64()),
        # Slice rows: this slice's FPR minus the lowest FPR among the column's slices (the
        # widest gap of a column is the maximum); overall rows: that maximum over all columns.
        pa.field("fpr_gap", pa.float64()),
        pa.field("target_precision", pa.float64()),
        pa.field("recall_at_precision", pa.float64()),  # best recall with precision >= target
        pa.field("ece", pa.float64()),  # expected calibration error, 10 equal-width bins
        pa.field("quarantined", pa.int64()),  # examples the model could not score (excluded)
        pa.field("bootstrap_samples", pa.int32()),
        pa.field("evaluated_at", TS, nullable=False),
    ]
)

#: Human review outcomes (moderator decisions, appeals), imported from CSV or Parquet.
LABELS_SCHEMA = pa.schema(
    [
        pa.field("label_id", pa.string(), nullable=False),  # sha256 of the identifying fields
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),  # 1 violating, 0 not
        pa.field("decision", pa.string(), nullable=False),  # violating | not_violating | upheld | overturned
        pa.field("source", pa.string(), nullable=False),  # moderator | appeal
        pa.field("market", pa.string()),
        pa.field("reviewer", pa.string()),
        pa.field("policy_id", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("reviewed_at", TS, nullable=False),
        pa.field("import_id", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("imported_at", TS, nullable=False),
    ]
)

#: ``moderation review-queue``: items sampled for human review.
REVIEW_QUEUE_SCHEMA = pa.schema(
    [
        pa.field("queue_id", pa.string(), nullable=False),  # the sampling run
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # uncertain | audit
        pa.field("stratum", pa.string(), nullable=False),  # "<category>/<slice>=<value>" or "audit"
        pa.field("stratum_size", pa.int64(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("threshold", pa.float32()),
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("policy_version", pa.int32(), nullable=False),
        pa.field("model_id", pa.string()),
        pa.field("item_type", pa.string()),
        pa.field("language", pa.string()),
        pa.field("markets", STR_LIST),
        pa.field("queued_at", TS, nullable=False),
    ]
)

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
}


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
