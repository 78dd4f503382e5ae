"""Past runs: list them, show one, and check that it can be reproduced.

Every job writes one row to ``<lake>/runs``. That row is enough to reproduce a scoring run: the
catalog URI and the Delta version it read (time travel), the slice (where / limit), the column
mapping and media roots, the policy file's content hash, and each model's registry digest.
``reproducibility`` checks those inputs are still there: the catalog version is still readable
(its log not expired, its data files not vacuumed), a policy file with the recorded hash exists,
and the model registry still pins the recorded digests. ``show_run`` prints the row grouped,
the checks, and the command that runs it again.

Library only (the ``moderation runs`` commands call it, through ``moderation.runs``); no Ray, no Spark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from moderation.errors import ConfigError, ModerationError, one_line
from moderation.runs.record import RUN_COLUMNS, RunRecord, read_row
from moderation.schemas import RUNS_SCHEMA
from moderation.storage.lake import Lake, arrow_filesystem

#: Run kinds whose output is a function of (catalog version, slice, policy, models): reproduced
#: by a backfill of the same catalog version into a new lake.
SCORING_KINDS = ("backfill", "rescan")
NEW_LAKE = "NEW_LAKE"
POLICY_PLACEHOLDER = "POLICY_FILE"

# ------------------------------------------------------------------------------------------
# Listing
# ------------------------------------------------------------------------------------------


def _with_all_columns(table: pa.Table) -> pa.Table:
    """The runs rows with every RUNS_SCHEMA column (a table written before a column was added
    lacks it: null). Columns this code does not know are kept."""
    for f in RUNS_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table


def _read_runs(lake: Lake, flt=None) -> pa.Table:
    return _with_all_columns(lake.read("runs", filter=flt))


def list_runs(
    lake: Lake,
    *,
    kind: str | None = None,
    policy_id: str | None = None,
    status: str | None = None,
    limit: int | None = 20,
) -> pa.Table:
    """Runs rows of the lake, newest first (``started_at`` descending, then ``run_id``
    descending; rows without a start time last).

    Args:
        kind, policy_id, status: keep only rows with exactly this value.
        limit: at most this many rows (None: all).

    Returns:
        A table with every ``RUNS_SCHEMA`` column (empty when the lake has no runs yet).

    Raises:
        ModerationError: ``limit`` below 1.
    """
    if limit is not None and limit < 1:
        raise ModerationError(f"limit must be at least 1, got {limit}")
    flt = None
    for name, value in (("kind", kind), ("policy_id", policy_id), ("status", status)):
        if value is not None:
            cond = pc.field(name) == value
            flt = cond if flt is None else flt & cond
    table = _read_runs(lake, flt)
    if table.num_rows:
        # In Python (one row per run, so few): per-key null placement needs pyarrow >= 25.
        started = table.column("started_at").to_pylist()
        ids = table.column("run_id").to_pylist()
        order = sorted(range(table.num_rows), key=lambda i: (started[i] is not None, started[i] or 0, ids[i]),
                       reverse=True)
        table = table.take(pa.array(order, pa.int64()))
    return table.slice(0, limit) if limit is not None else table


def _ts(value: dt.datetime | None, *, seconds: bool = True) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + "Z"


def _duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None or end is None:
        return "-"
    s = max(0, round((end - start).total_seconds()))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _policy_label(row: RunRecord) -> str:
    if row.policy_id is None:
        return "-"
    version = row.policy_version
    if row.kind == "diff" and row.from_version is not None:
        return f"{row.policy_id} v{row.from_version}->v{version}"
    return f"{row.policy_id} v{version}" if version is not None else row.policy_id


def _counts(row: RunRecord) -> str:
    """The counts that say what a run of this kind did, in a few words."""
    def n(name: str) -> int | None:
        return getattr(row, name)

    parts: list[str] = []
    if n("selected_pairs") is not None or row.kind in SCORING_KINDS:
        if n("selected_pairs") is not None:
            parts.append(f"{n('selected_pairs')} sel")
        if n("scored_pairs") is not None:
            parts.append(f"{n('scored_pairs')} scored")
        if n("quarantined_pairs") is not None:
            parts.append(f"{n('quarantined_pairs')} quar")
        if n("unchanged_pairs") is not None:
            parts.append(f"{n('unchanged_pairs')} unchanged")
        if n("removed_pairs"):
            parts.append(f"{n('removed_pairs')} removed")
    for name, label in (("violation_rows", "violation rows"), ("retired_rows", "retired"),
                        ("diff_rows", "diff rows"), ("enforcement_rows", "enforcement rows")):
        if n(name) is not None:
            parts.append(f"{n(name)} {label}")
    if row.kind == "promote" and n("from_version") is not None:
        parts.append(f"from v{n('from_version')}")
    return ", ".join(parts) or "-"


def runs_rows(table: pa.Table) -> tuple[tuple[str, ...], list[tuple]]:
    """(header, rows) of the runs table ``format_runs`` prints (and the CLI draws with rich)."""
    header = ("RUN ID", "KIND", "STATUS", "POLICY", "CATALOG", "COUNTS", "STARTED", "TOOK")
    lines = []
    for r in map(RunRecord.from_row, table.to_pylist()):
        catalog = "-" if r.catalog_version is None else f"v{r.catalog_version}"
        if r.catalog_version is None and r.catalog_uri is not None:
            catalog = "parquet"
        took = _duration(r.started_at, r.ended_at)
        if r.status == "running" and r.ended_at is None:
            took = "…"
        lines.append((r.run_id, r.kind, r.status, _policy_label(r), catalog, _counts(r),
                      _ts(r.started_at, seconds=False), took))
    return header, lines


def format_runs(table: pa.Table) -> str:
    """A compact, aligned text table of runs rows (as ``list_runs`` returns them): run id,
    kind, status, policy, catalog version, what the run counted, start time and duration."""
    header, rows = runs_rows(table)
    if not rows:
        return "no runs"
    lines = [header, *rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# Reproducibility checks
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One reproducibility check. ``advisory`` checks warn but do not make a run
    non-reproducible (the engine settings of the run profile, for instance)."""

    name: str
    ok: bool
    detail: str
    advisory: bool = False

    def format(self) -> str:
        mark = "OK  " if self.ok else ("WARN" if self.advisory else "FAIL")
        return f"{mark}  {self.name}: {self.detail}"


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _files(n: int) -> str:
    return f"{n} data file{'' if n == 1 else 's'}"


def _missing_files(root: str, uris: list[str]) -> list[str]:
    """Those of ``uris`` (data files of a Delta snapshot) that the store no longer has."""
    if not root.startswith("s3://"):
        return [u for u in uris if not os.path.isfile(_local_path(u))]
    import pyarrow.fs as pafs

    fs, base = arrow_filesystem(root)
    base = base.rstrip("/")
    keys = {u: u[len("s3://"):] for u in uris}
    under = {u: k for u, k in keys.items() if k.startswith(base + "/")}
    # One recursive listing (a LIST per 1,000 objects) instead of a HEAD per data file.
    listed = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    present = {info.path for info in listed if info.type == pafs.FileType.File}
    missing = [u for u, k in under.items() if k not in present]
    others = [u for u in uris if u not in under]  # absolute paths outside the table (clones)
    if others:
        infos = fs.get_file_info([keys[u] for u in others])
        missing += [u for u, info in zip(others, infos, strict=True) if info.type != pafs.FileType.File]
    return missing


def delta_version_check(name: str, uri: str, version: int) -> Check:
    """Whether Delta table ``uri`` can still be read at ``version`` by time travel: its log
    reaches back to the version (not expired by log cleanup) and every data file of that
    snapshot is still in the store (not vacuumed)."""
    from deltalake import DeltaTable

    from moderation.storage.lake import storage_options

    opts = storage_options(uri)
    try:
        if not DeltaTable.is_deltatable(uri, storage_options=opts):
            return Check(name, False, f"{uri} is no longer a Delta table (moved or deleted): version {version} "
                                      f"cannot be read")
        latest = DeltaTable(uri, storage_options=opts).version()
    except Exception as e:  # noqa: BLE001 - delta-rs raises generic errors for unreachable stores
        return Check(name, False, f"{uri} cannot be opened: {one_line(e, 300)}")
    if version > latest:
        return Check(name, False, f"{uri} is at version {latest}; version {version} does not exist "
                                  f"(was the table re-created?)")
    try:
        snapshot = DeltaTable(uri, version=version, storage_options=opts)
        files = snapshot.file_uris()
    except Exception as e:  # noqa: BLE001 - a missing log segment is a generic DeltaError
        text = one_line(e, 300)
        expired = any(s in text.lower() for s in ("log segment", "logsegment", "no files in log"))
        why = (": the log entries it needs have expired (log cleanup after delta.logRetentionDuration)"
               if expired else "")
        return Check(name, False, f"{uri} version {version} is no longer readable by time travel{why}: {text}")
    try:
        missing = _missing_files(uri, files)
    except OSError as e:
        return Check(name, False, f"{uri}: the data files of version {version} cannot be listed: {one_line(e, 300)}")
    if missing:
        return Check(name, False, f"{uri} version {version}: {len(missing)} of its {_files(len(files))} gone from the "
                                  f"store (vacuumed; delta.deletedFileRetentionDuration), e.g. {missing[0]}")
    now = "" if latest == version else f"; the table is now at version {latest}"
    return Check(name, True, f"{uri} version {version} is readable by time travel "
                             f"({_files(len(files))} present{now})")


def _catalog_check(run: RunRecord) -> Check | None:
    uri, version = run.catalog_uri, run.catalog_version
    if uri is None:
        return None
    if version is None:
        return Check("catalog version", False, f"{uri} was read as plain Parquet (no Delta version recorded): what "
                                               f"it held at run time cannot be read back")
    check = delta_version_check("catalog version", uri, version)
    if not check.ok:
        return check
    # Readable as Delta; the backfill must also accept it (reader features, column mapping).
    from moderation.storage.catalog import open_catalog

    columns = dict(c.split("=", 1) for c in run.catalog_columns or [] if "=" in c)
    try:
        open_catalog(uri, version=version, column_map=columns)
    except ModerationError as e:
        return Check("catalog version", False, f"version {version} is readable, but a backfill refuses it: {e}")
    return check


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _candidates(recorded: str) -> list[Path]:
    """Where a recorded policy path may be now: as recorded (absolute, or relative to the
    working directory) and relative to the project root (the CLI records it as given)."""
    from moderation.config import PROJECT_ROOT

    path = Path(recorded)
    return [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]


def find_policy_file(run: RunRecord, *, conf_dir: Path | None = None) -> tuple[Path | None, str]:
    """A policy file whose bytes hash to the run's ``policy_hash``, and how it was found.

    The recorded ``policy_path`` wins when it still hashes the same; otherwise every
    ``policies/**/*.yaml`` (and ``.yml``) under ``conf_dir`` (default conf/) is hashed.

    Returns:
        (the file or None, a sentence saying what was found or why nothing was).
    """
    from moderation.config import default_conf_dir

    want = run.policy_hash
    recorded = run.policy_path
    notes: list[str] = []
    if want is None:
        return None, "the run recorded no policy hash"
    if recorded:
        seen = False
        for path in _candidates(recorded):
            got = _sha256(path)
            if got is None:
                continue
            seen = True
            if got == want:
                return path, f"{path} still has sha256 {want[:12]}…"
        notes.append(f"the recorded file {recorded} " + ("was edited since the run" if seen else "no longer exists"))
    else:
        notes.append("the run recorded no policy path")
    policies = (conf_dir or default_conf_dir()) / "policies"
    for path in sorted([*policies.rglob("*.yaml"), *policies.rglob("*.yml")]):
        if _sha256(path) == want:
            return path, f"{'; '.join(notes)}; {path} has sha256 {want[:12]}…"
    return None, (f"{'; '.join(notes)}; no file under {policies} has sha256 {want}: the policy version the run "
                  f"used is lost")


def _model_checks(run: RunRecord, models_dir: Path | None) -> list[Check]:
    ids = list(run.model_ids or [])
    digests = list(run.model_digests or [])
    if not ids:
        return []
    if len(digests) != len(ids):
        return [Check("models", False, f"the run recorded {len(ids)} model ids but {len(digests)} digests")]
    from moderation.config import load_model_registry

    try:
        registry = load_model_registry(models_dir)
    except ConfigError as e:
        return [Check("models", False, f"the model registry cannot be loaded: {e}")]
    checks = []
    for model_id, digest in zip(ids, digests, strict=True):
        name = f"model {model_id}"
        spec = registry.get(model_id)
        if spec is None:
            checks.append(Check(name, False, f"no longer in the model registry; registered: {sorted(registry)}"))
        elif spec.digest != digest:
            checks.append(Check(name, False, f"the registry now pins digest {spec.digest[:12]}…, the run used "
                                             f"{digest[:12]}… (artifacts or preprocessing changed)"))
        else:
            checks.append(Check(name, True, f"the registry still pins digest {digest[:12]}… (artifacts are checked "
                                            f"against it when loaded)"))
    return checks


def _profile_check(run: RunRecord, policy_file: Path | None, models_dir: Path | None,
                   conf_dir: Path | None) -> tuple[Check | None, Path | None]:
    """Which run profile under conf/jobs reproduces the run's config hash (policy + profile +
    models), so the command can name it. Advisory: engine settings rarely change scores."""
    want = run.config_hash
    if want is None or run.kind not in SCORING_KINDS or policy_file is None:
        return None, None
    from moderation.config import (
        config_hash,
        default_conf_dir,
        load_model_registry,
        load_policy,
        load_run_profile,
    )

    jobs = (conf_dir or default_conf_dir()) / "jobs"
    try:
        registry = load_model_registry(models_dir)
        policy = load_policy(policy_file, registry).policy
        models = [registry[m] for m in policy.models]
    except (ModerationError, KeyError) as e:
        return Check("run profile", False, f"config hash {want[:12]}… cannot be recomputed: {e}", advisory=True), None
    for path in sorted(jobs.glob("*.yaml")):
        try:
            profile = load_run_profile(path)
        except ModerationError:
            continue
        if config_hash(policy, profile, *models) == want:
            return Check("run profile", True, f"{path} gives the run's config hash {want[:12]}…", advisory=True), path
    return Check("run profile", False, f"no profile under {jobs} gives config hash {want[:12]}… with the current "
                                       f"policy and models: engine settings (batch size, half precision on GPU, …) "
                                       f"may differ", advisory=True), None


def reproducibility(
    run: RunRecord, *, lake: Lake | None = None, models_dir: Path | None = None, conf_dir: Path | None = None
) -> list[Check]:
    """Check that the inputs a run recorded can still be had.

    - catalog version: the catalog is still readable at the recorded Delta version (log not
      expired, data files not vacuumed) and a backfill accepts it;
    - policy file: a file with the recorded content hash exists (the recorded path, else one
      under ``conf_dir/policies``);
    - model <id>: the registry's current digest of each recorded model equals the recorded one;
    - with ``lake``: the hash bank and scores versions the run pinned are still readable;
    - run profile (advisory): a profile under ``conf_dir/jobs`` gives the recorded config hash.

    Checks that do not apply to the run (no catalog, no policy, ...) are left out.
    """
    return _assess(run, lake=lake, models_dir=models_dir, conf_dir=conf_dir)[0]


def _assess(run: RunRecord, *, lake: Lake | None, models_dir: Path | None,
            conf_dir: Path | None) -> tuple[list[Check], Path | None, Path | None]:
    """(the checks, the policy file found, the run profile found)."""
    checks: list[Check] = []
    catalog = _catalog_check(run)
    if catalog is not None:
        checks.append(catalog)
    policy_file = None
    if run.policy_hash is not None:
        policy_file, detail = find_policy_file(run, conf_dir=conf_dir)
        checks.append(Check("policy file", policy_file is not None, detail))
    checks += _model_checks(run, models_dir)
    if lake is not None:
        if run.hash_bank_version is not None:
            checks.append(delta_version_check("hash bank version", lake.uri("hash_bank"), run.hash_bank_version))
        if run.scores_version is not None:
            checks.append(delta_version_check("scores version", lake.uri("scores"), run.scores_version))
    profile, profile_file = _profile_check(run, policy_file, models_dir, conf_dir)
    if profile is not None:
        checks.append(profile)
    return checks, policy_file, profile_file


def reproduce_command(
    run: RunRecord, *, lake_root: str | None = None, policy_file: str | Path | None = None,
    profile_file: str | Path | None = None,
) -> str | None:
    """The command that runs ``run`` again, or None for kinds that score or decide nothing.

    Backfills and re-scans become a backfill of the same catalog version, slice, column mapping
    and media roots into a new lake (``NEW_LAKE``); a decide is the same decide on the lake.
    ``policy_file`` defaults to the recorded ``policy_path`` (``POLICY_FILE`` when none).
    """
    policy = str(policy_file or run.policy_path or POLICY_PLACEHOLDER)
    kind = run.kind
    if kind in SCORING_KINDS and run.catalog_uri:
        args = ["moderation", "backfill", "--catalog", run.catalog_uri]
        if run.catalog_version is not None:
            args += ["--catalog-version", str(run.catalog_version)]
        args += ["--lake", NEW_LAKE, "--policy", policy]
        if profile_file is not None:
            args += ["--profile", str(profile_file)]
        if run.where_expr:
            args += ["--where", run.where_expr]
        if run.item_limit is not None:
            args += ["--limit", str(run.item_limit)]
        for mapping in run.catalog_columns or []:
            args += ["--map", mapping]
        for root in run.media_roots or []:
            args += ["--media-root", root]
    elif kind == "decide":
        args = ["moderation", "decide", "--lake", lake_root or "LAKE", "--policy", policy]
    else:
        return None
    return " ".join(a if a in (NEW_LAKE, POLICY_PLACEHOLDER) else _quote(a) for a in args)


def _quote(arg: str) -> str:
    """Shell quoting that keeps SQL readable: ``"item_type = 'track'"`` rather than shlex's
    ``'item_type = '"'"'track'"'"''`` when double quotes are safe."""
    quoted = shlex.quote(arg)
    if quoted != arg and "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return quoted


# ------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------

#: How ``RunReport.format`` groups the columns, with their labels. Columns not named here
#: (added after this module) are shown under "other", so nothing non-null is ever hidden.
GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("run", (("run_id", "run id"), ("kind", "kind"), ("status", "status"))),
    ("inputs", (
        ("catalog_uri", "catalog"), ("catalog_version", "catalog version"), ("where_expr", "where"),
        ("item_limit", "limit"), ("catalog_columns", "column mapping"), ("media_roots", "media roots"),
        ("max_item_words", "max words per item"),
        ("max_item_seconds", "max audio seconds per item"), ("max_error_share", "max error share"),
        ("policy_id", "policy id"), ("policy_version", "policy version"),
        ("from_version", "from version"),
        ("policy_hash", "policy hash"), ("policy_path", "policy file"), ("model_ids", "models"),
        ("model_digests", "model digests"), ("modalities", "modalities"), ("categories", "categories"),
        ("hash_bank_version", "hash bank version"), ("scores_version", "scores version"),
        ("change_source", "change source"), ("baseline_run_id", "baseline run"),
        ("baseline_versions", "baseline versions"),
    )),
    ("outputs", (
        ("selected_pairs", "selected pairs"), ("scored_pairs", "scored pairs"),
        ("quarantined_pairs", "quarantined pairs"), ("score_error_pairs", "score error pairs"),
        ("unchanged_pairs", "unchanged pairs"),
        ("removed_pairs", "removed pairs"), ("chunks_committed", "chunks committed"),
        ("violation_rows", "violation rows"), ("retired_rows", "retired rows"), ("diff_rows", "diff rows"),
        ("enforcement_rows", "enforcement rows"), ("promoted_to", "promoted to"), ("cascade", "cascade"),
    )),
    ("provenance", (
        ("config_hash", "config hash"), ("code_version", "code version"), ("started_at", "started"),
        ("ended_at", "ended"), ("forced", "forced"),
    )),
    ("evaluation gate", (("gate_status", "gate status"), ("gate_detail", "gate detail"))),
    ("error", (("error", "error"),)),
)
_LABEL_WIDTH = 19


def _value(value) -> str:
    if isinstance(value, dt.datetime):
        return _ts(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


def _line(label: str, value: str) -> list[str]:
    pad = " " * (2 + _LABEL_WIDTH + 1)
    text = value.splitlines() or [""]
    return [f"  {label.ljust(_LABEL_WIDTH)} {text[0]}", *(pad + t for t in text[1:])]


@dataclass(frozen=True)
class RunReport:
    """A run's record, its reproducibility checks and the command that reproduces it.

    ``extra``: the columns of the run's row that ``RunRecord`` does not know (a table written by a
    newer version), so that nothing the row holds is hidden."""

    lake_root: str
    run: RunRecord
    checks: tuple[Check, ...] = ()
    command: str | None = None
    notes: tuple[str, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def reproducible(self) -> bool:
        """All non-advisory checks pass."""
        return all(c.ok or c.advisory for c in self.checks)

    def format(self) -> str:
        """Every non-null column of the row, grouped; then the checks and the command."""
        run = self.run
        out: list[str] = []
        shown: set[str] = set()
        ids, digests = run.model_ids, run.model_digests
        # Each model id beside its digest, where the two lists pair up.
        pairs = list(zip(ids, digests, strict=True)) if ids and digests is not None and len(digests) == len(ids) else []
        paired = bool(pairs)
        for title, columns in GROUPS:
            lines: list[str] = []
            for name, label in columns:
                shown.add(name)
                value = getattr(run, name)
                if value is None or (paired and name == "model_digests"):
                    continue
                if paired and name == "model_ids":  # each id beside its digest
                    width = max(len(m) for m, _ in pairs)
                    for i, (m, d) in enumerate(pairs):
                        lines += _line("models" if i == 0 else "", f"{m.ljust(width)}  {d}")
                    continue
                lines += _line(label, _value(value))
            if title == "outputs":
                lines += self._accounting()
            if title == "provenance" and run.started_at is not None and run.ended_at is not None:
                lines += _line("duration", _duration(run.started_at, run.ended_at))
            if lines:
                out += [title if title != "run" else f"run {run.run_id}", *lines, ""]
        other = [(k, v) for k, v in (*run.to_row().items(), *self.extra) if k not in shown and v is not None]
        if other:
            out += ["other", *[ln for k, v in other for ln in _line(k, _value(v))], ""]
        if self.checks:
            verdict = "reproducible" if self.reproducible else "NOT reproducible"
            out.append(f"reproducibility: {verdict}")
            out += [f"  {c.format()}" for c in self.checks]
            out.append("")
        if self.command is not None:
            out.append("reproduce with")
            out.append(f"  {self.command}")
            out += [f"  {n}" for n in self.notes]
        elif self.notes:
            out += [f"  {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def to_dict(self) -> dict:
        """The report as JSON-able data (``runs show --json``): every recorded column (nulls
        too), the checks (``reproducible`` is null when none ran), the command and notes."""
        from moderation.output import json_value

        return {
            "run": json_value({**self.run.to_row(), **dict(self.extra)}),
            "reproducible": self.reproducible if self.checks else None,
            "checks": [{"name": c.name, "ok": c.ok, "advisory": c.advisory, "detail": c.detail} for c in self.checks],
            "command": self.command,
            "notes": list(self.notes),
        }

    def _accounting(self) -> list[str]:
        sel, sc, q = (getattr(self.run, k) for k in ("selected_pairs", "scored_pairs", "quarantined_pairs"))
        if sel is None or sc is None or q is None:
            return []
        mark = "OK" if sel == sc + q else "MISMATCH"
        return _line("accounting", f"selected {sel} = scored {sc} + quarantined {q}  [{mark}]")


def require_run(lake: Lake, run_id: str) -> tuple[RunRecord, dict[str, Any]]:
    """The record of ``run_id`` and the columns of its row the record does not know (a newer
    table's), or an error that helps find it.

    Raises:
        ModerationError: no such run in the lake (naming the run id, the lake's runs table
            and run ids that contain it, if any).
    """
    if not lake.exists("runs"):
        raise ModerationError(f"run {run_id!r} not found: {lake.uri('runs')} does not exist (no run has written "
                              f"to lake {lake.root} yet)")
    row = read_row(lake, run_id)
    if row is None:
        ids = lake.read("runs", columns=["run_id"]).column("run_id").to_pylist()
        near = sorted(i for i in ids if run_id in i)[:5]
        hint = f"; run ids containing it: {', '.join(near)}" if near else "; `moderation runs list` shows its runs"
        raise ModerationError(f"run {run_id!r} not found in {lake.uri('runs')}{hint}")
    return RunRecord.from_row(row), {k: v for k, v in row.items() if k not in RUN_COLUMNS}


def show_run(
    lake: Lake, run_id: str, *, check: bool = True, models_dir: Path | None = None, conf_dir: Path | None = None
) -> RunReport:
    """The runs row of ``run_id`` with its reproducibility checks and reproduce command.

    Args:
        check: run the reproducibility checks (they open the catalog at the recorded version
            and list its data files).

    Raises:
        ModerationError: the run id is not in the lake.
    """
    run, extra = require_run(lake, run_id)
    checks: list[Check] = []
    policy_file: Path | str | None = None
    profile_file: Path | None = None
    if check:
        checks, policy_file, profile_file = _assess(run, lake=lake, models_dir=models_dir, conf_dir=conf_dir)
    if check and policy_file is None and run.policy_hash is not None:
        policy_file = POLICY_PLACEHOLDER  # the recorded path is gone or edited: never name it
    command = reproduce_command(run, lake_root=lake.root, policy_file=policy_file, profile_file=profile_file)
    return RunReport(lake_root=lake.root, run=run, checks=tuple(checks), command=command,
                     notes=tuple(_notes(run, lake, command)), extra=tuple(extra.items()))


def _notes(run: RunRecord, lake: Lake, command: str | None) -> list[str]:
    kind = run.kind
    if command is None:
        return [(f"(a {kind} run scores and decides nothing: there is no command to reproduce it; its inputs "
                 f"are listed above)")]
    notes: list[str] = []
    if kind in SCORING_KINDS:
        notes.append(f"{NEW_LAKE}: a new lake root, so the tables of {lake.root} are left as they are")
    if kind == "rescan":
        baseline = f" since run {run.baseline_run_id}" if run.baseline_run_id else ""
        notes.append(f"the rescan scored only pairs changed{baseline}; this backfill scores the whole selection at "
                     f"the same catalog version (the changed pairs get the same scores)")
    if kind in SCORING_KINDS and run.hash_bank_version is not None:
        notes.append(f"covers were matched against {lake.uri('hash_bank')} version {run.hash_bank_version}: "
                     f"copy that table into {NEW_LAKE} and restore it to that version first")
    if kind == "decide" and run.scores_version is not None:
        notes.append(f"decide reads the latest scores; the run read scores version {run.scores_version} "
                     f"(the scores version check above says whether scores have moved since)")
    if run.policy_hash is not None and POLICY_PLACEHOLDER in command:
        notes.append(f"{POLICY_PLACEHOLDER}: no file with the run's policy hash was found (see the policy file check)")
    return notes
