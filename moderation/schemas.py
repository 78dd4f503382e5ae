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

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "scores": SCORES_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
    "violations": VIOLATIONS_SCHEMA,
    "runs": RUNS_SCHEMA,
    "removals": REMOVALS_SCHEMA,
    "diffs": DIFFS_SCHEMA,
    "diff_samples": DIFF_SAMPLES_SCHEMA,
    "enforcement": ENFORCEMENT_SCHEMA,
}


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
