"""``moderation``: the command line. Thin: parses options, calls the library, prints.

Every user error (a ModerationError) is one line on stderr and exit code 2, raised before
anything is written. ``EXIT_CODES`` is the one list of exit codes (the help epilog and
docs/commands.md show it). List and show commands take ``--json``; their tables are drawn
with rich at a terminal and printed as aligned text elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import typer

from moderation.config import default_conf_dir
from moderation.errors import ModerationError

if TYPE_CHECKING:
    from moderation.scoring.plan import ChangeSource

#: Every exit status of every command (main() maps errors to them). docs/commands.md's "Exit
#: codes" table and the --help epilog are generated from this.
EXIT_CODES: dict[int, tuple[str, str]] = {
    0: ("success", "the command did what it was asked"),
    1: ("a check failed", "`runs show` found the run not reproducible, `models verify` a digest mismatch or "
        "missing file, `bank add` rejected an image; or a bug, whose traceback is printed"),
    2: ("user error", "bad option, policy file, category, model, catalog, column mapping, `--where` or run id: one "
        "`error:` line naming the file, field and value, and nothing written; also a user error raised inside Ray "
        "(a scoring actor refusing a tampered or missing artifact), with `(raised inside ...)` appended"),
    3: ("storage failed", "the store failed (S3 unreachable or timing out; any delta-rs, DataFusion, pyarrow or "
        "boto3 storage error), wherever it struck: one `error:` line; what was committed is kept and the same "
        "command resumes the run"),
    4: ("error share exceeded", "a backfill or rescan whose model failed on more than the run profile's "
        "`max_error_share` of its selected pairs: `error: run ID failed: error share ...`; its rows stay committed"),
    130: ("interrupted", "Ctrl-C"),
}
DOCS_EXIT_CODES = "docs/commands.md#exit-codes"

# Plain tracebacks: rich ones print local variables, which may hold secrets.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Catalog policy backfill: score a catalog against content policies (Ray Data),\n"
                  "decide policy versions from stored scores, report with Spark.",
                  epilog="Exit codes: " + ", ".join(f"{code} {short}" for code, (short, _) in EXIT_CODES.items())
                  + f" (details: {DOCS_EXIT_CODES}).")


def _version(value: bool) -> None:
    if value:
        from moderation.runs import code_version

        typer.echo(f"moderation {code_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="print the package version (with the git commit in a checkout) and exit"),
) -> None:
    pass


DEFAULT_LAKE = "demo-lake"
DEMO_POLICIES = ("catalog-safety/v1.yaml", "catalog-safety/v2.yaml", "catalog-safety/v3.yaml", "catalog-safety/v9.yaml")


def _setup_logging(verbose: bool) -> None:
    """WARNING by default, INFO with --verbose; $MODERATION_LOG_LEVEL (e.g. DEBUG) overrides both."""
    level = os.environ.get("MODERATION_LOG_LEVEL", "").upper() or (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Nothing may reach a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _fail(err: ModerationError) -> None:
    """One line on stderr; exit 2 (bad input, nothing written) or the error's own code (3: the
    store failed mid-run, resumable)."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=getattr(err, "exit_code", 2))


def _command(group: typer.Typer, name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command on ``group``: the skeleton every command shares. Its ``--verbose``
    sets up logging first, and a ModerationError it raises becomes one ``error:`` line and the
    error's exit code (``_fail``); any other exception reaches ``main()``."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)  # typer reads the options from the wrapped signature
        def run(*args: Any, **kwargs: Any) -> None:
            _setup_logging(bool(kwargs.get("verbose", False)))
            try:
                fn(*args, **kwargs)
            except ModerationError as e:
                _fail(e)

        group.command(name)(run)
        return run

    return register


def _run_id_option(rows: str, kind: str) -> Any:
    """``--run-id`` of a command that writes ``rows`` rows (checked by ``_checked_run_id``)."""
    return typer.Option(None, callback=_checked_run_id,
                        help=f"run id recorded in runs and in the {rows} rows (default: {kind}-<utc time>-<random>)")


#: Options many commands share.
_LAKE = typer.Option(..., help="lake root URI")
_VERBOSE = typer.Option(False, "--verbose", "-v",
                        help="log at INFO (default WARNING; $MODERATION_LOG_LEVEL overrides both)")


def _progress() -> bool:
    """A progress bar only for a person at a terminal, not in a job's log."""
    return sys.stderr.isatty()


def _default_master() -> str | None:
    """None (the master spark-submit set) when spark-submit launched this process: it starts
    the JVM first and hands over its gateway in $PYSPARK_GATEWAY_PORT. Else local[*]."""
    return None if os.environ.get("PYSPARK_GATEWAY_PORT") else "local[*]"


#: What a --run-id may be: it names Delta app transactions, leases and SQL predicates, and is
#: printed in logs, so only a plain, bounded token is accepted.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _checked_run_id(value: str | None) -> str | None:
    """typer callback: a --run-id outside ``RUN_ID_PATTERN`` is one error line and exit 2."""
    if value is not None and not RUN_ID_PATTERN.fullmatch(value):
        typer.echo(f"error: --run-id {value[:200]!r}: a run id is 1 to 128 characters from A-Z a-z 0-9 . _ -, "
                   f"starting with a letter or digit", err=True)
        raise typer.Exit(code=2)
    return value


def _abs_uri(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def _column_map(items: list[str]) -> dict[str, str]:
    column_map = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise ModerationError(f"--map {item!r}: expected FIELD=COLUMN, e.g. --map item_id=track_uri")
        column_map[field.strip()] = column.strip()
    return column_map


_MAP_HELP = ("FIELD=COLUMN: read catalog field FIELD from the catalog's column COLUMN (repeatable; adds to the "
             "profile's catalog_columns)")
_ROOT_HELP = ("folder or s3:// prefix media URIs may lie under (repeatable; default: the profile's media_roots, "
              "else the catalog's folder)")
_RAY_HELP = ("Ray cluster to join: HOST:PORT of its head, or auto for the `ray start` cluster on this machine "
             "(default $RAY_ADDRESS, which `ray job submit` sets; neither: a private local Ray, never a running "
             "cluster)")
_JSON_HELP = "print JSON (one document) instead of text"
_PROFILE_HELP = "run profile (default conf/jobs/local.yaml; conf/jobs/cluster.yaml for a GPU cluster)"
_DECIDE_HELP = "after the run, decide this policy version from the stored scores (as `moderation decide`)"
_ENFORCE_HELP = "after --decide, export the live version's actions (as `moderation enforce`; refused unless live)"

#: Options of the scoring commands (backfill, rescan).
_RAY_ADDRESS = typer.Option(None, help=_RAY_HELP)
_PROFILE = typer.Option(None, help=_PROFILE_HELP)
_MAP = typer.Option([], "--map", help=_MAP_HELP)
_MEDIA_ROOT = typer.Option([], "--media-root", help=_ROOT_HELP)
_FORCE = typer.Option(False, "--force", help="run although the evaluation gate blocks this policy version or model "
                      "(conf/eval/gate.yaml); the override is recorded in runs")
_ENFORCE = typer.Option(False, "--enforce", help=_ENFORCE_HELP)


def _check_follow_ups(decide: bool, enforce: bool) -> None:
    if enforce and not decide:
        raise ModerationError("--enforce exports what a decide wrote: pass --decide too")


def _follow_ups(*, lake: str, policy: Path, decide: bool, enforce: bool) -> None:
    """``--decide`` / ``--enforce`` after a scoring run: the same calls as those commands."""
    if decide:
        from moderation.policy.decide import run_decide

        typer.echo(run_decide(lake_root=lake, policy_path=policy).summary())
    if enforce:
        from moderation.policy.enforcement import run_enforce

        typer.echo(run_enforce(lake_root=lake, policy_path=policy).summary())


@_command(app)
def backfill(
    catalog: str = typer.Option(..., help="catalog Delta table (or Parquet) URI: path or s3://"),
    lake: str = typer.Option(..., help="lake root URI: path or s3://"),
    policy: Path = typer.Option(..., help="policy version file, e.g. conf/policies/catalog-safety/v1.yaml"),
    run_id: str | None = typer.Option(None, callback=_checked_run_id,
                                         help="run id; re-using a finished one writes nothing, an unfinished one "
                                              "resumes"),
    where: str | None = typer.Option(
        None, help="SQL predicate selecting a catalog slice, e.g. \"item_type = 'track'\""),
    limit: int | None = typer.Option(None, min=1, help="score at most N items"),
    catalog_version: int | None = typer.Option(None, min=0, help="read this Delta version of the catalog "
                                                   "(time travel; default the latest), e.g. to reproduce a past run"),
    ray_address: str | None = _RAY_ADDRESS,
    profile: Path | None = _PROFILE,
    map_: list[str] = _MAP,
    media_root: list[str] = _MEDIA_ROOT,
    force: bool = _FORCE,
    decide: bool = typer.Option(False, "--decide", help=_DECIDE_HELP),
    enforce: bool = _ENFORCE,
    verbose: bool = _VERBOSE,
) -> None:
    """Score the catalog with the policy's models into <lake>/scores and <lake>/quarantine."""
    from moderation.scoring.backfill import run_backfill

    _check_follow_ups(decide, enforce)
    result = run_backfill(
        catalog_uri=_abs_uri(catalog), lake_root=_abs_uri(lake), policy_path=policy, run_id=run_id,
        where=where, limit=limit, catalog_version=catalog_version, ray_address=ray_address,
        profile_path=profile, column_map=_column_map(map_), media_roots=[_abs_uri(r) for r in media_root],
        force=force, progress=_progress(),
    )
    typer.echo(result.summary())
    _follow_ups(lake=_abs_uri(lake), policy=policy, decide=decide, enforce=enforce)


@_command(app)
def rescan(
    catalog: str = typer.Option(..., help="catalog Delta table (or Parquet) URI: path or s3://"),
    lake: str = typer.Option(..., help="lake root URI: path or s3://"),
    policy: Path = typer.Option(..., help="policy version file"),
    run_id: str | None = typer.Option(None, callback=_checked_run_id,
                                      help="run id; re-using an unfinished one resumes it"),
    change_source: str = typer.Option("auto", help="auto (the catalog's change data feed when usable, else "
                                      "content hashes), cdf, or anti_join"),
    ray_address: str | None = _RAY_ADDRESS,
    profile: Path | None = _PROFILE,
    map_: list[str] = _MAP,
    media_root: list[str] = _MEDIA_ROOT,
    force: bool = _FORCE,
    decide: bool = typer.Option(False, "--decide", help=_DECIDE_HELP + " (also when nothing changed)"),
    enforce: bool = _ENFORCE,
    verbose: bool = _VERBOSE,
) -> None:
    """Score only what changed since the last successful run: new items, changed content,
    changed model versions. Items gone from the catalog are recorded in <lake>/removals and
    their violations retired at the next decide. Writes nothing when nothing changed."""
    from moderation.scoring.rescan import run_rescan

    _check_follow_ups(decide, enforce)
    result = run_rescan(
        catalog_uri=_abs_uri(catalog), lake_root=_abs_uri(lake), policy_path=policy, run_id=run_id,
        change_source=cast("ChangeSource", change_source), ray_address=ray_address, profile_path=profile,
        column_map=_column_map(map_), media_roots=[_abs_uri(r) for r in media_root], force=force,
        progress=_progress(),
    )
    typer.echo(result.summary())
    _follow_ups(lake=_abs_uri(lake), policy=policy, decide=decide, enforce=enforce)


@_command(app)
def decide(
    lake: str = _LAKE,
    policy: Path = typer.Option(..., help="policy version file"),
    run_id: str | None = _run_id_option("violations", "decide"),
    verbose: bool = _VERBOSE,
) -> None:
    """Apply a policy version to the stored scores (no model) and replace its violations."""
    from moderation.policy.decide import run_decide

    result = run_decide(lake_root=_abs_uri(lake), policy_path=policy, run_id=run_id)
    typer.echo(result.summary())


@_command(app)
def diff(
    lake: str = _LAKE,
    policy: str = typer.Option(..., help="policy id, e.g. catalog-safety"),
    from_version: int = typer.Option(..., "--from", help="the version compared from (usually the live one)"),
    to_version: int = typer.Option(..., "--to", help="the version compared to (the candidate)"),
    sample_per_stratum: int = typer.Option(20, min=0, help="review-sample rows per category x change"),
    seed: int = typer.Option(0, help="review-sample seed"),
    run_id: str | None = _run_id_option("diffs", "diff"),
    verbose: bool = _VERBOSE,
) -> None:
    """Compare two decided versions of a policy (no model): write <lake>/diffs (newly violating,
    cleared, action changed, per item, category and market) and a stratified review sample to
    <lake>/diff_samples, and print a summary by category, item type, market and language."""
    from moderation.policy.diff import run_diff

    result = run_diff(lake_root=_abs_uri(lake), policy_id=policy, from_version=from_version,
                      to_version=to_version, run_id=run_id, sample_per_stratum=sample_per_stratum, seed=seed)
    typer.echo(result.summary())


@_command(app)
def enforce(
    lake: str = _LAKE,
    policy: Path = typer.Option(..., help="the live policy version file"),
    run_id: str | None = _run_id_option("enforcement", "enforce"),
    verbose: bool = _VERBOSE,
) -> None:
    """Export the actions the live version takes to <lake>/enforcement (one row per item,
    category and market; change data feed on). Refused for draft and shadow versions.
    Idempotent per version: exporting the same decide again writes nothing."""
    from moderation.policy.enforcement import run_enforce

    result = run_enforce(lake_root=_abs_uri(lake), policy_path=policy, run_id=run_id)
    typer.echo(result.summary())


@_command(app)
def report(
    lake: str = _LAKE,
    master: str | None = typer.Option(None, help="Spark master (default: spark-submit's under spark-submit, "
                                         "else local[*])"),
    min_cell_count: int = typer.Option(10, "--min-cell-count", min=1,
                                       help="k of reports/transparency: a cell counting fewer items is suppressed "
                                            "(count withheld, suppressed=true), and so is the smallest other "
                                            "cell of any line total that would give it back"),
    verbose: bool = _VERBOSE,
) -> None:
    """Spark job: violation counts and rates by policy version, category, item type, market,
    language, and how much of each item its model read (coverage); the analysts' reports (trend by
    decide date, creator / show / album roll-ups and blast radius, detection methods, a
    transparency summary with small cells suppressed), each with a PNG chart; all written under
    <lake>/reports/. Also the spark-submit entrypoint (jobs/report.py)."""
    from moderation.reporting.report import run_report

    result = run_report(_abs_uri(lake), master=master or _default_master(), min_cell_count=min_cell_count)
    typer.echo(result.summary())


def _version_pins(items: list[str]) -> dict[str, int]:
    pins: dict[str, int] = {}
    for item in items:
        table, sep, version = item.partition("=")
        if not sep or not table.strip() or not version.strip().isdigit():
            raise ModerationError(f"--version-of {item!r}: expected TABLE=VERSION, e.g. --version-of violations=3")
        pins[table.strip()] = int(version)
    return pins


@_command(app, "sql")
def sql_(
    query: str = typer.Argument(
        ..., help="one read-only Spark SQL statement, e.g. \"SELECT count(*) FROM violations\""),
    lake: str = _LAKE,
    csv: bool = typer.Option(False, "--csv", help="print CSV with a header (lists and maps as JSON)"),
    json_: bool = typer.Option(False, "--json", help="print JSON Lines, one object per row"),
    version_of: list[str] = typer.Option([], "--version-of", help="TABLE=VERSION: read this Delta version of the "
                                         "table (time travel; repeatable); others are read at their current version"),
    catalog: str | None = typer.Option(None, help="a catalog Delta table outside the lake, as the view `catalog`"),
    max_rows: int = typer.Option(1000, min=0, help="print at most N rows (0: all); a cut result says so on stderr"),
    master: str | None = typer.Option(None, help="Spark master (default: spark-submit's under spark-submit, "
                                         "else local[*])"),
    verbose: bool = _VERBOSE,
) -> None:
    """Query the lake with Spark SQL, offline: every lake table is a temp view of one pinned
    snapshot (scores, violations, runs, diffs, eval_results, reports_violation_rates, ...; see
    docs/cookbook.md). The snapshot's versions are printed on stderr."""
    from moderation.reporting.query import format_rows, run_sql

    if csv and json_:
        raise ModerationError("--csv and --json: choose one output format")
    result = run_sql(_abs_uri(lake), query, versions=_version_pins(version_of),
                     catalog_uri=None if catalog is None else _abs_uri(catalog), max_rows=max_rows,
                     master=master or _default_master())
    typer.echo(result.pinned.describe(), err=True)
    for name, why in sorted(result.skipped.items()):
        typer.echo(f"warning: {name}: no view: {why}", err=True)
    typer.echo(format_rows(result.rows, "csv" if csv else "json" if json_ else "table"), nl=False)
    if result.truncated:
        typer.echo(f"warning: output cut at {max_rows} rows (--max-rows 0 prints all)", err=True)


@_command(app, "tables")
def tables_(
    lake: str = _LAKE,
    table: list[str] = typer.Argument(None, help="only these tables (path under the lake, e.g. eval/results, or "
                                      "view name, e.g. eval_results; default: all)", show_default=False),
    json_: bool = typer.Option(False, "--json", help=_JSON_HELP),
    columns: bool = typer.Option(True, help="also list each table's columns with their descriptions"),
    write_comments: bool = typer.Option(False, "--write-comments", help="set the column comments of tables created "
                                        "before the descriptions existed (one Delta commit per column changed; run "
                                        "it when no job writes to the lake)"),
) -> None:
    """The lake's data dictionary: every Delta table under the lake root with its version, row
    count (from the Delta log's statistics, no scan), last writer (the run id its last commit
    recorded, else the operation) and columns with their descriptions (moderation/schemas.py,
    the source of the column comments and of docs/tables.md)."""
    from moderation.output import dumps, is_terminal, print_rich_table
    from moderation.reporting.dictionary import column_rows, describe_lake, format_tables, overview_rows

    root = _abs_uri(lake)
    found = describe_lake(root, table or None)
    if write_comments:
        from moderation.schemas import LAKE_SCHEMAS
        from moderation.storage.lake import Lake

        for info in found:
            if info.name in LAKE_SCHEMAS:
                changed = Lake(root).write_comments(info.name, LAKE_SCHEMAS[info.name])
                typer.echo(f"{info.name}: {len(changed)} column comment(s) written", err=True)
        found = describe_lake(root, table or None)
    if json_:
        typer.echo(dumps([t.to_dict() for t in found]))
    elif is_terminal():
        print_rich_table(*overview_rows(found), title=f"tables of {root}")
        if columns:
            for t in found:
                print_rich_table(*column_rows(t), title=f"{t.name} (v{t.version})")
    else:
        typer.echo(format_tables(found, columns=columns))


@_command(app)
def demo(
    lake: str = typer.Option(DEFAULT_LAKE, help="lake root for the demo (created if missing)"),
    items: int = typer.Option(2000, min=10, help="items in the demo catalog"),
    data_dir: Path | None = typer.Option(None, help="labelled data and media (default ../shared/data)"),
    verbose: bool = _VERBOSE,
) -> None:
    """Build a demo catalog at <lake>/catalog (with generated media in <lake>/demo-media), bank
    two stand-in images, backfill with the models of v3 (text, cover art, audio) and of v9 (the
    fine-tuned multilingual text model), decide v1, v2, v3 and v9 from those scores, and report."""
    from moderation.demo.run import run_demo

    policies = [default_conf_dir() / "policies" / p for p in DEMO_POLICIES]
    run_demo(lake_root=_abs_uri(lake), items=items, data_dir=data_dir, policies=policies, echo=typer.echo)


models_app = typer.Typer(no_args_is_help=True, help="The model registry (conf/models/).")
app.add_typer(models_app, name="models")


@_command(models_app, "list")
def models_list(json_: bool = typer.Option(False, "--json", help=_JSON_HELP)) -> None:
    """List registered models: id, modality, categories, digest, artifacts."""
    from moderation.config import load_model_registry

    registry = load_model_registry()
    if json_:
        from moderation.output import dumps

        typer.echo(dumps([{"model_id": spec.model_id, "modality": spec.modality, "categories": list(spec.categories),
                           "digest": spec.digest,
                           "artifacts": {name: {"uri": ref.uri, "sha256": ref.sha256, "convert": ref.convert}
                                         for name, ref in sorted(spec.artifacts.items())}}
                          for spec in registry.values()]))
        return
    from moderation.output import is_terminal, print_rich_table

    if is_terminal():
        print_rich_table(("model", "modality", "categories", "digest", "artifacts"), [
            (spec.model_id, spec.modality, ",".join(spec.categories), spec.digest[:12] + "…",
             ", ".join(f"{name}{' (converted)' if ref.convert else ''}"
                       for name, ref in sorted(spec.artifacts.items())))
            for spec in registry.values()], title="models (conf/models)")
        return
    for spec in registry.values():
        typer.echo(f"{spec.model_id}  modality={spec.modality}  categories={','.join(spec.categories)}  "
                   f"digest={spec.digest}")
        for name, ref in sorted(spec.artifacts.items()):
            derived = f" (converted by {ref.convert})" if ref.convert else ""
            typer.echo(f"    {name:16} {ref.sha256[:16]}…  {ref.uri}{derived}")


@_command(models_app, "verify")
def models_verify(
    model_id: str | None = typer.Argument(None, help="one model id (default: all)"),
    policy: Path | None = typer.Option(None, help="only the models of this policy version file"),
    on_cluster: bool = typer.Option(False, "--on-cluster", help="check from a Ray task on every alive node of the "
                                    "cluster, each reading the artifacts as a scoring actor there would"),
    ray_address: str | None = _RAY_ADDRESS,
) -> None:
    """Check every artifact's SHA-256 against the registry (derived artifacts built from their
    pinned source first); exit 1 on any mismatch or missing file, on any node with --on-cluster."""
    from moderation.config import load_model_registry
    from moderation.scoring.model_verify import (
        check_artifacts,
        check_on_cluster,
        format_checks,
        format_nodes,
        select_models,
    )

    specs = select_models(load_model_registry(), model_id=model_id, policy=policy)
    if on_cluster:
        reports = check_on_cluster(specs, address=ray_address)
    if on_cluster:
        for line in format_nodes(reports):
            typer.echo(line)
        failures = sum(not r.ok for r in reports)
        what = "node(s)"
    else:
        checks = check_artifacts(specs)
        for line in format_checks(checks):
            typer.echo(line)
        failures = sum(not c.ok for c in checks)
        what = "artifact(s)"
    if failures:
        typer.echo(f"{failures} {what} failed verification", err=True)
        raise typer.Exit(code=1)


bank_app = typer.Typer(no_args_is_help=True, help="The hash bank of known violating images (<lake>/hash_bank).")
app.add_typer(bank_app, name="bank")


@_command(bank_app, "add")
def bank_add(
    paths: list[str] = typer.Argument(..., help="image files (or s3:// URIs) to bank"),
    lake: str = _LAKE,
    category: str = typer.Option(..., help="policy category the images violate, e.g. sexual"),
    label: str = typer.Option(..., help="label shown as evidence when a cover matches"),
    source: str | None = typer.Option(None, help="where the images came from (default: each path)"),
    min_quality: int = typer.Option(50, min=0, max=100, help="reject hashes below this PDQ quality"),
) -> None:
    """Hash images with PDQ and add them to the bank (idempotent: known hashes are skipped).
    Exit 1 if any image was rejected (unreadable, not an image, hash quality too low)."""
    from moderation.storage.bank import add_to_bank
    from moderation.storage.lake import Lake

    result = add_to_bank(Lake(_abs_uri(lake)), [_abs_uri(p) for p in paths], category=category, label=label,
                         source=source, min_quality=min_quality)
    typer.echo(f"added {len(result.added)}, already present {len(result.already_present)}, "
               f"rejected {len(result.rejected)} (bank version {result.version})")
    for path, reason in result.rejected:
        typer.echo(f"  rejected {path}: {reason}")
    if result.rejected:
        raise typer.Exit(code=1)


policy_app = typer.Typer(no_args_is_help=True, help="Policy versions: lifecycle (draft, shadow, live, retired).")
app.add_typer(policy_app, name="policy")


@_command(policy_app, "promote")
def policy_promote(
    lake: str = _LAKE,
    policy: Path = typer.Option(..., help="the policy version file to promote"),
    to: str = typer.Option("live", help="live or shadow"),
    force: bool = typer.Option(False, "--force", help="promote although the version was not decided or not "
                               "compared (moderation diff) with the live one; recorded in runs"),
    run_id: str | None = typer.Option(None, callback=_checked_run_id,
                                         help="run id the promotion is recorded under in runs "
                                              "(default: promote-<utc time>-<random>)"),
    verbose: bool = _VERBOSE,
) -> None:
    """Make a policy version live (the previous live one is retired) or shadow; recorded in
    <lake>/runs. Going live needs a decide of the version and a diff from the live version."""
    from moderation.policy.lifecycle import run_promote

    if to not in ("live", "shadow"):
        _fail(ModerationError(f"--to {to!r}: expected live or shadow"))
    result = run_promote(lake_root=_abs_uri(lake), policy_path=policy, to=cast(Literal["live", "shadow"], to),
                         force=force, run_id=run_id)
    typer.echo(result.summary())


@_command(policy_app, "status")
def policy_status(
    lake: str = _LAKE,
    policy: Path = typer.Option(..., help="any version file of the policy (its sibling files are read too)"),
    json_: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Each version's declared and effective status (from promotions recorded in <lake>/runs)."""
    from moderation.config import load_policy
    from moderation.policy.lifecycle import declared_statuses, effective_status
    from moderation.storage.lake import Lake

    loaded = load_policy(policy)
    lake_ = Lake(_abs_uri(lake))
    pid = loaded.policy.policy_id
    rows = [{"policy_id": pid, "version": version, "declared": declared,
             "effective": effective_status(lake_, pid, version, declared)}
            for version, declared in sorted(declared_statuses(loaded).items())]
    if json_:
        from moderation.output import dumps

        typer.echo(dumps(rows))
        return
    from moderation.output import is_terminal, print_rich_table

    if is_terminal():
        print_rich_table(("policy", "version", "effective", "file says"),
                         [(r["policy_id"], r["version"], r["effective"], r["declared"]) for r in rows])
        return
    for r in rows:
        typer.echo(f"{r['policy_id']} v{r['version']}: {r['effective']}"
                   + (f" (file says {r['declared']})" if r["effective"] != r["declared"] else ""))


runs_app = typer.Typer(no_args_is_help=True,
                       help="Past runs (<lake>/runs): what each read and wrote, and how to reproduce it.")
app.add_typer(runs_app, name="runs")


@_command(runs_app, "list")
def runs_list(
    lake: str = _LAKE,
    kind: str | None = typer.Option(
        None, help="backfill, rescan, decide, diff, promote, enforce, labels_import, review_queue or report"),
    policy: str | None = typer.Option(None, help="policy id"),
    status: str | None = typer.Option(None, help="running, succeeded, failed or blocked"),
    limit: int = typer.Option(20, min=1, help="newest N runs"),
    json_: bool = typer.Option(False, "--json", help=_JSON_HELP + ": every recorded column of each run"),
) -> None:
    """List runs, newest first."""
    from moderation.output import dumps, is_terminal, print_rich_table
    from moderation.runs import format_runs, list_runs, runs_rows
    from moderation.storage.lake import Lake

    table = list_runs(Lake(_abs_uri(lake)), kind=kind, policy_id=policy, status=status, limit=limit)
    if json_:
        typer.echo(dumps(table.to_pylist()))
    elif is_terminal() and table.num_rows:
        print_rich_table(*runs_rows(table))
    else:
        typer.echo(format_runs(table))


@_command(runs_app, "show")
def runs_show(
    run_id: str = typer.Argument(..., help="run id"),
    lake: str = _LAKE,
    check: bool = typer.Option(True, help="check that the run is still reproducible (catalog version readable "
                               "by time travel, policy file with the recorded hash, model digests)"),
    json_: bool = typer.Option(False, "--json", help=_JSON_HELP + ": the row, the checks, the command"),
) -> None:
    """Everything a run recorded, whether it can still be reproduced, and the command that does.
    Exit 1 when a check fails."""
    from moderation.runs import show_run
    from moderation.storage.lake import Lake

    report = show_run(Lake(_abs_uri(lake)), run_id, check=check)
    if json_:
        from moderation.output import dumps

        typer.echo(dumps(report.to_dict()))
    else:
        typer.echo(report.format(), nl=False)
    if check and not report.reproducible:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------
# Evaluation (moderation/evaluation/)
# --------------------------------------------------------------------------------------
@_command(app)
def evaluate(
    lake: str = typer.Option(..., help="lake root URI (datasets in <lake>/eval/datasets, results in <lake>/eval)"),
    model: str = typer.Option(..., help="registry model id, e.g. text-minilm-heads-v1"),
    dataset: str = typer.Option(..., help="evaluation dataset name (moderation eval datasets)"),
    policy: Path | None = typer.Option(None, help="policy version file: its thresholds (default 0.5) and "
                                          "version key the results"),
    dataset_version: int | None = typer.Option(None, min=0, help="a past dataset version (default: latest)"),
    baselines: bool = typer.Option(True, help="also evaluate the registry's baseline models (role: baseline)"),
    target_precision: float = typer.Option(0.9, help="for recall at target precision"),
    bootstrap: int = typer.Option(1000, min=0, help="bootstrap resamples for the 95% intervals"),
    seed: int = typer.Option(0),
    slices: bool = typer.Option(True, help="print the per-slice rows too"),
    media_root: list[str] = typer.Option([], help="folder or s3:// prefix image/audio examples may lie under "
                                         "(repeatable; default: the data directory's media)"),
    verbose: bool = _VERBOSE,
) -> None:
    """Score an evaluation dataset with a model (and the baselines) and print per-category and
    per-slice metrics with bootstrap 95% intervals; results go to <lake>/eval/results."""
    from moderation.evaluation.evaluate import evaluate as run_evaluate

    result = run_evaluate(lake_root=_abs_uri(lake), model_id=model, dataset=dataset, policy_path=policy,
                          dataset_version=dataset_version, baselines=baselines,
                          target_precision=target_precision, bootstrap=bootstrap, seed=seed,
                          media_roots=[_abs_uri(r) for r in media_root] or None)
    typer.echo(result.summary(slices=slices))


@_command(app)
def calibrate(
    lake: str = _LAKE,
    model: str = typer.Option(..., help="registry model id"),
    dataset: str = typer.Option(..., help="evaluation dataset to fit thresholds on (e.g. hatexplain_validation)"),
    policy: Path = typer.Option(..., help="the base policy version file (usually the live one)"),
    target_precision: float = typer.Option(..., help="precision each category's threshold must reach"),
    review_precision: float | None = typer.Option(None, help="precision of the review band's lower edge "
                                                     "(default target - 0.2)"),
    out: Path | None = typer.Option(None, help="where to write the new version (default: beside --policy)"),
    category: list[str] = typer.Option(None, help="calibrate only this category (repeatable; default all): "
                                       "the others keep the base version's rule"),
    verbose: bool = _VERBOSE,
) -> None:
    """Propose per-category thresholds for a target precision and write them as a new draft
    policy version file."""
    from moderation.evaluation.calibrate import calibrate as run_calibrate

    result = run_calibrate(lake_root=_abs_uri(lake), model_id=model, dataset=dataset, policy_path=policy,
                           target_precision=target_precision, review_precision=review_precision, out=out,
                           categories=category or None)
    typer.echo(result.summary())


eval_app = typer.Typer(no_args_is_help=True, help="Evaluation datasets (<lake>/eval/datasets) and the report.")
app.add_typer(eval_app, name="eval")


def _label_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        cat, sep, col = item.partition("=")
        out[cat.strip()] = (col if sep else cat).strip()
    return out


@_command(eval_app, "import")
def eval_import(
    file: Path = typer.Argument(..., help="CSV, TSV or Parquet file"),
    lake: str = _LAKE,
    name: str = typer.Option(..., help="dataset name; an existing one gets a new version"),
    label_column: list[str] = typer.Option(..., help="CATEGORY=COLUMN (or COLUMN when named like the category): "
                                           "0/1, true/false, yes/no; empty = not labelled (repeatable)"),
    slice_column: list[str] = typer.Option([], help="a column to slice metrics by, e.g. target_group, language, "
                                           "dialect (repeatable; values with '|' name several groups)"),
    text_column: str = typer.Option("text", help="the text of each example"),
    id_column: str | None = typer.Option(None, help="the example id (default: the row number)"),
    modality: str = typer.Option("text", help="text, image or audio (media: --media-column holds URIs)"),
    media_column: str | None = typer.Option(None, help="the media URI column of image/audio examples"),
    description: str = typer.Option("", help="what the dataset is"),
) -> None:
    """Import a labelled file as a new version of an evaluation dataset."""
    from moderation.evaluation.datasets import import_file, import_provenance, write_dataset
    from moderation.storage.lake import Lake

    labels = _label_map(label_column)
    table = import_file(file, label_columns=labels, slice_columns=slice_column, text_column=text_column,
                        id_column=id_column, media_column=media_column, modality=modality)
    version, written = write_dataset(Lake(_abs_uri(lake)), name, table, description=description,
                                     provenance=import_provenance(file, labels=labels, slices=slice_column))
    what = "wrote" if written else "unchanged:"
    typer.echo(f"{what} dataset {name} v{version}: {table.num_rows} examples, labels {sorted(labels)}, "
               f"slices {slice_column or '-'}")


@_command(eval_app, "import-standard")
def eval_import_standard(
    lake: str = _LAKE,
    data_dir: Path | None = typer.Option(None, help="labelled data folder (default $MODERATION_DATA_DIR or "
                                            "../shared/data)"),
    name: list[str] = typer.Option([], help="only these standard datasets (repeatable)"),
) -> None:
    """Build the standard evaluation datasets from the held-out splits of the labelled data."""
    from moderation.evaluation.datasets import import_standard
    from moderation.evaluation.sources import default_data_dir
    from moderation.storage.lake import Lake

    done = import_standard(Lake(_abs_uri(lake)), data_dir or default_data_dir(), name or None)
    for ds, version, written in done:
        typer.echo(f"{'wrote' if written else 'unchanged:'} dataset {ds} v{version}")


@_command(eval_app, "compare")
def eval_compare(
    lake: str = _LAKE,
    model: str = typer.Option(..., help="registry model id (A)"),
    dataset: str = typer.Option(..., help="evaluation dataset name"),
    against: list[str] = typer.Option([], help="model(s) to compare with (B; default: the registry's baselines)"),
    dataset_version: int | None = typer.Option(None, min=0, help="a past dataset version (default: latest)"),
    min_slice_n: int = typer.Option(30, min=1, help="slices with fewer examples are left out"),
    bootstrap: int = typer.Option(1000, help="paired bootstrap resamples (at least 100)"),
    seed: int = typer.Option(0),
    csv: Path | None = typer.Option(None, help="also write the rows to this CSV file"),
    verbose: bool = _VERBOSE,
) -> None:
    """Model A against model B on the same examples, per category and slice: PR-AUC and ROC-AUC
    differences with paired bootstrap 95% intervals and a verdict (better / worse / no clear
    difference). Reuses stored predictions; writes nothing to the lake."""
    from moderation.evaluation.compare import compare, comparisons_frame, format_comparison

    results = compare(lake_root=_abs_uri(lake), dataset=dataset, model_id=model, against=against or None,
                      dataset_version=dataset_version, min_slice_n=min_slice_n, bootstrap=bootstrap, seed=seed)
    typer.echo("\n\n".join(format_comparison(c) for c in results))
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        comparisons_frame(results).to_csv(csv, index=False)
        typer.echo(f"wrote {csv}")


@_command(eval_app, "datasets")
def eval_datasets(
    lake: str = _LAKE,
    json_: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """List the evaluation datasets: version, rows, label balance, slices."""
    from moderation.evaluation.datasets import format_datasets, list_datasets
    from moderation.output import dumps, is_terminal, print_rich_table
    from moderation.storage.lake import Lake

    rows = list_datasets(Lake(_abs_uri(lake)))
    if json_:
        typer.echo(dumps([{**r, "labels": {c: {"positives": p, "labelled": n} for c, (p, n) in r["labels"].items()}}
                          for r in rows]))
    elif is_terminal() and rows:
        print_rich_table(("dataset", "version", "rows", "labels (positives/labelled)", "slices"), [
            (r["name"], r["version"], r["rows"], ", ".join(f"{c} {p}/{n}" for c, (p, n) in r["labels"].items()),
             ", ".join(r["slices"]) or "-") for r in rows])
    else:
        typer.echo(format_datasets(rows))


@_command(eval_app, "from-labels")
def eval_from_labels(
    lake: str = typer.Option(..., help="lake root URI (reads <lake>/labels)"),
    catalog: str = typer.Option(..., help="catalog Delta table (or Parquet) URI: the reviewed items' text"),
    name: str = typer.Option("catalog_reviews", help="dataset name; new reviews make a new version"),
    catalog_version: int | None = typer.Option(None, min=0, help="catalog Delta version (default: latest)"),
    map_: list[str] = _MAP,
) -> None:
    """Turn the latest human label of each (item, category) into a new version of an evaluation
    dataset (text of the item from the catalog), so the next evaluation includes the reviews."""
    from moderation.evaluation.labels import labels_to_dataset

    result = labels_to_dataset(_abs_uri(lake), catalog_uri=_abs_uri(catalog), name=name,
                               column_map=_column_map(map_) or None, catalog_version=catalog_version)
    typer.echo(result.summary())


@_command(eval_app, "report")
def eval_report(
    lake: str = typer.Option(..., help="lake root URI (reads <lake>/eval/results and predictions)"),
    out: Path = typer.Option(Path("eval-report"), help="folder for eval_report.html and eval_summary.png"),
    dataset: list[str] = typer.Option([], help="only these datasets (repeatable; default: every evaluated one)"),
    min_slice_n: int = typer.Option(30, min=1, help="slices with fewer examples are left out of the slice tables"),
) -> None:
    """Write a static HTML report (PR curves, calibration plots, slice tables; no server, no
    network) and a PNG summary of the latest evaluations."""
    from moderation.evaluation.report import write_report
    from moderation.storage.lake import Lake

    files = write_report(Lake(_abs_uri(lake)), out, datasets=dataset or None, min_slice_n=min_slice_n)
    typer.echo(files.summary())


labels_app = typer.Typer(no_args_is_help=True, help="Human review outcomes (<lake>/labels).")
app.add_typer(labels_app, name="labels")


@_command(labels_app, "import")
def labels_import(
    file: Path = typer.Argument(..., help="CSV, TSV or Parquet: item_id, category, decision or label, "
                                "reviewed_at, [source, market, reviewer, policy_id, policy_version]"),
    lake: str = _LAKE,
    policy: Path | None = typer.Option(None, help="check categories against this policy version"),
    map_: list[str] = typer.Option([], "--map", help="FIELD=COLUMN: read FIELD from the file's column COLUMN"),
) -> None:
    """Import moderator decisions and appeal outcomes (upheld = 1, overturned = 0) into
    <lake>/labels; importing the same file again writes nothing."""
    from moderation.evaluation.labels import import_labels

    result = import_labels(_abs_uri(lake), file, column_map=_column_map(map_) or None, policy_path=policy)
    typer.echo(result.summary())


@_command(app, "review-queue")
def review_queue(
    lake: str = _LAKE,
    policy: Path = typer.Option(..., help="policy version file: its thresholds define the uncertain band"),
    per_stratum: int = typer.Option(20, min=1, help="most items per category x slice value"),
    audit: int = typer.Option(50, min=0, help="uniform random audit items on top"),
    band: float = typer.Option(0.1, min=0.0, help="a score within this distance of a threshold is uncertain"),
    slice_column: list[str] = typer.Option([], help="stratify by language, item_type, markets or explicit "
                                           "(repeatable; default language and item_type)"),
    seed: int = typer.Option(0, help="same seed, same sample"),
    queue_id: str | None = typer.Option(None, help="queue id (re-using one writes nothing)"),
    requeue_pending: bool = typer.Option(False, help="also queue pairs an earlier queue holds that no review "
                                         "has answered yet (default: leave them out)"),
) -> None:
    """Sample items for human review into <lake>/review_queue: the uncertain band around each
    threshold (stratified by category and slice) plus a random audit sample."""
    from moderation.evaluation.queue import build_review_queue

    result = build_review_queue(_abs_uri(lake), policy, per_stratum=per_stratum, audit=audit, band=band,
                                slice_columns=tuple(slice_column) or ("language", "item_type"), seed=seed,
                                queue_id=queue_id, requeue_pending=requeue_pending)
    typer.echo(result.summary())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and exit the process with its status.

    The one entrypoint for people and schedulers alike (``moderation``, ``python -m moderation``,
    ``jobs/*.py``): the same options, exit codes (2 user error, 3 storage failed mid-run, 4 a
    scoring run over its error share, 1 a failed check) and exit guard. Never returns.
    """
    from moderation.redact import install

    install()  # before deltalake is imported: secrets never reach logs or printed errors
    code = 0
    try:
        app(args=argv, prog_name="moderation")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # a store failing outside a run (opening the lake, a decide's read, ...)
        from moderation.errors import is_storage_failure, moderation_cause, one_line

        if is_storage_failure(e):
            print(f"error: storage failed: {one_line(e)}", file=sys.stderr)
            code = 3
        elif (cause := moderation_cause(e)) is not None:  # e.g. an actor refused an artifact, inside Ray
            print(f"error: {one_line(cause, 2000)} (raised inside {type(e).__name__})", file=sys.stderr)
            code = getattr(cause, "exit_code", 2)
        else:
            raise
    _exit(code)


def _exit(code: int) -> None:
    """Exit without the interpreter's teardown: delta-rs' native threads can abort a normal
    exit ("terminate called without an active exception", status 134; delta-io/delta-rs#2184),
    which would turn a finished command into a crash. A local Ray this process started is shut
    down first, and every stream flushed."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
