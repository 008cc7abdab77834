"""The risk step at 1M loans on PostgreSQL, in 1 and 2 worker processes, against one
hand-written SQL statement computing the same per-loan features on the same data in the same
run (issue 4's benchmark).

1. The book: ``bench/close_bench.py``'s base (``loanwatch_closebench_base_<N>``, built by
   ``loanwatch demo`` if missing), then once ``loanwatch_riskbench_ready_<N>``: a clone on which
   the close's steps before risk (``late_fees``, ``delinquency``, ``promises``) ran for D, so
   the risk step meets the book exactly as it does in the nightly close; ``VACUUM ANALYZE``.
2. For each worker count (``--workers``, default 1 and 2): a fresh clone, a wait for a quiet
   machine, then the baseline statement (``CREATE UNLOGGED TABLE … AS SELECT``: every open
   loan's installment aggregates, settled-lateness ranks, payments per period, reversals,
   failed debits and borrower delinquency, all in one statement, no chunks, no Python), then
   the risk step itself: N processes, each running the close's own ``run_chunk("risk", …)``
   over every Nth chunk of the close's loan-id ranges, exactly as N Celery workers share a
   close's chunks. Recorded: wall seconds, loans/s, flags raised, peak RSS per process, and
   the ratio step / baseline.

``--night first`` (the default) times the first close of the generated book: every flag its
arrears deserve is raised at once, and no close before it, so every open loan is evaluated.
``--night next`` times the night after: ``loanwatch_riskbench_next_<N>`` is the ready book
on which the rest of D's close ran (risk, grades, reminders, snapshot, portfolio; D recorded
as a succeeded close) and then the steps before risk for D + 1, so the step evaluates only the
loans one night may have changed (``risk.service._may_change_overnight``). The baselines
compute the features of every open loan either way.

    .venv/bin/python bench/risk_bench.py --loans 1000000
    .venv/bin/python bench/risk_bench.py --loans 1000000 --night next
    .venv/bin/python bench/risk_bench.py --loans 100000 --workers 1

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import close_bench  # a sibling script, not a package

ROOT = close_bench.ROOT
SCRATCH = "loanwatch_riskbench"
STEPS_BEFORE_RISK = ("late_fees", "delinquency", "promises")

# Written by hand for this data (one currency with two minor digits: tolerance 100 minor
# units; the default rules' thresholds): what the risk step's features query computes, as
# a DBA would write it once for the whole book.
BASELINE = """
CREATE UNLOGGED TABLE risk_features_baseline AS
WITH installments AS (
    SELECT i.loan_id, i.seq, i.due_date, i.paid_on, p.grace_days,
           DATE '{as_of}' - i.due_date AS late,
           i.principal_minor + i.interest_minor + i.fees_minor + i.late_fees_minor
             - i.paid_principal_minor - i.paid_interest_minor - i.paid_fees_minor
             - i.interest_waived_minor - i.fees_waived_minor AS unpaid,
           i.principal_minor + i.interest_minor + i.fees_minor AS due_amount,
           count(i.paid_on) OVER w AS settled_rank,
           count(*) FILTER (WHERE DATE '{as_of}' - i.due_date > p.grace_days) OVER w
             AS closed_rank,
           lead(i.due_date) OVER w AS previous_due_date
    FROM loan_installment i
    JOIN loan l ON l.id = i.loan_id
    JOIN product p ON p.code = l.product_code
    WHERE l.status IN ('active', 'delinquent', 'defaulted', 'charged_off', 'restructured')
    WINDOW w AS (PARTITION BY i.loan_id ORDER BY i.seq DESC)
), per_loan AS (
    SELECT loan_id,
           max(due_date) FILTER (WHERE seq = 1) AS first_due_date,
           max(late) FILTER (WHERE seq = 1 AND late > 0 AND unpaid > 100) AS first_late,
           coalesce(max(unpaid) FILTER (WHERE seq = 1), 0) AS first_unpaid,
           min(seq) FILTER (WHERE seq <= 3 AND late >= 60 AND unpaid > 100)
             AS early_default_seq,
           max(seq) FILTER (WHERE late > grace_days) AS latest_due_seq,
           max(seq) FILTER (WHERE late > grace_days AND unpaid <= 100) AS last_good_seq,
           max(greatest(paid_on - due_date, 0)) FILTER (WHERE settled_rank = 1
             AND paid_on IS NOT NULL) AS last_late,
           max(greatest(paid_on - due_date, 0)) FILTER (WHERE settled_rank = 4
             AND paid_on IS NOT NULL) AS first_late_of_window
    FROM installments GROUP BY loan_id
), periods AS (
    SELECT pay.loan_id, r.seq, r.due_amount,
           count(*) FILTER (WHERE pay.status = 'applied') AS settled,
           count(*) FILTER (WHERE pay.status = 'reversed'
                              AND pay.reversal_reason IN ('nsf', 'chargeback')
                              AND pay.reversed_on > DATE '{as_of}' - 60)
             AS reversals,
           string_agg(pay.id, ',') FILTER (WHERE pay.status = 'reversed'
                                 AND pay.reversal_reason IN ('nsf', 'chargeback')
                                 AND pay.reversed_on > DATE '{as_of}' - 60)
             AS reversed_ids,
           max(pay.id) FILTER (WHERE pay.status = 'reversed'
                                 AND pay.reversal_reason IN ('nsf', 'chargeback')
                                 AND pay.reversed_on > DATE '{as_of}' - 60)
             AS last_reversed_id,
           max(pay.reversed_on) FILTER (WHERE pay.status = 'reversed'
                                          AND pay.reversal_reason IN ('nsf', 'chargeback')
                                          AND pay.reversed_on > DATE '{as_of}' - 60)
             AS last_reversed_on,
           coalesce(sum(pay.amount_minor) FILTER (WHERE pay.status = 'applied'), 0) AS paid
    FROM payment pay
    LEFT JOIN installments r
      ON r.loan_id = pay.loan_id AND r.late > r.grace_days AND r.closed_rank <= 3
     AND pay.received_on - r.due_date <= r.grace_days
     AND (r.previous_due_date IS NULL OR pay.received_on - r.previous_due_date > r.grace_days)
    GROUP BY pay.loan_id, r.seq, r.due_amount
), payments AS (
    SELECT loan_id, sum(settled) AS settled, sum(reversals) AS reversals,
           string_agg(reversed_ids, ',') AS reversed_ids,
           max(last_reversed_id) AS last_reversed_id, max(last_reversed_on) AS last_reversed_on,
           string_agg(seq::text, ',') FILTER (WHERE seq IS NOT NULL AND paid > 0
                              AND paid * 10 < due_amount * 8) AS partial_seqs,
           count(*) FILTER (WHERE seq IS NOT NULL AND paid > 0
                              AND paid * 10 < due_amount * 8) AS partial_periods,
           max(seq) FILTER (WHERE seq IS NOT NULL AND paid > 0
                              AND paid * 10 < due_amount * 8) AS last_partial_seq
    FROM periods GROUP BY loan_id
), debits AS (
    SELECT loan_id, count(*) AS failed, string_agg(id, ',') AS failed_ids,
           max(id) AS last_failed_id, max(attempted_on) AS last_failed_on FROM failed_debit
    WHERE attempted_on > DATE '{as_of}' - 30 AND attempted_on <= DATE '{as_of}'
    GROUP BY loan_id
), delinquent AS (
    SELECT borrower_id, count(*) AS delinquent, string_agg(id, ',') AS delinquent_ids FROM loan
    WHERE days_past_due > 0
      AND status IN ('active', 'delinquent', 'defaulted', 'charged_off', 'restructured')
    GROUP BY borrower_id
)
SELECT l.id, l.borrower_id, l.days_past_due, l.bucket, l.previous_bucket,
       DATE '{as_of}' - l.cured_on AS cured_days_ago, l.cured_on, per_loan.*,
       coalesce(payments.settled, 0) AS settled, coalesce(payments.reversals, 0) AS reversals,
       payments.reversed_ids, payments.last_reversed_id, payments.last_reversed_on,
       coalesce(payments.partial_periods, 0) AS partial_periods, payments.partial_seqs,
       payments.last_partial_seq,
       coalesce(debits.failed, 0) AS failed, debits.failed_ids, debits.last_failed_id,
       debits.last_failed_on,
       coalesce(delinquent.delinquent, 0) AS delinquent, delinquent.delinquent_ids
FROM loan l
JOIN per_loan ON per_loan.loan_id = l.id
LEFT JOIN payments ON payments.loan_id = l.id
LEFT JOIN debits ON debits.loan_id = l.id
LEFT JOIN delinquent ON delinquent.borrower_id = l.borrower_id
WHERE l.status IN ('active', 'delinquent', 'defaulted', 'charged_off', 'restructured')
"""


# The reference statement: DPD, missed and consecutive-missed counts, first-payment
# default, partial and reversal counts per loan, plain aggregates (no windows, no payment
# periods), written once into a table.
SIMPLE = """
CREATE UNLOGGED TABLE risk_features_simple AS
WITH installments AS (
    SELECT i.loan_id,
           max(DATE '{as_of}' - i.due_date) FILTER (WHERE i.due_date < DATE '{as_of}'
             AND i.principal_minor + i.interest_minor + i.fees_minor + i.late_fees_minor
               - i.paid_principal_minor - i.paid_interest_minor - i.paid_fees_minor
               - i.interest_waived_minor - i.fees_waived_minor > 100) AS days_past_due,
           count(*) FILTER (WHERE DATE '{as_of}' - i.due_date > p.grace_days
             AND i.paid_on IS NULL) AS missed,
           coalesce(max(i.seq) FILTER (WHERE DATE '{as_of}' - i.due_date > p.grace_days), 0)
             - coalesce(max(i.seq) FILTER (WHERE DATE '{as_of}' - i.due_date > p.grace_days
                                             AND i.paid_on IS NOT NULL), 0)
             AS consecutive_missed,
           bool_or(i.seq = 1 AND i.paid_on IS NULL AND DATE '{as_of}' - i.due_date >= 10)
             AS first_payment_default,
           count(*) FILTER (WHERE i.paid_on IS NULL AND i.paid_principal_minor > 0)
             AS partial_installments
    FROM loan_installment i
    JOIN loan l ON l.id = i.loan_id
    JOIN product p ON p.code = l.product_code
    WHERE l.status IN ('active', 'delinquent', 'defaulted', 'charged_off', 'restructured')
    GROUP BY i.loan_id
), payments AS (
    SELECT loan_id, count(*) FILTER (WHERE status = 'reversed') AS reversals
    FROM payment GROUP BY loan_id
)
SELECT installments.*, coalesce(payments.reversals, 0) AS reversals
FROM installments LEFT JOIN payments ON payments.loan_id = installments.loan_id
"""


def ready_database(loans: int) -> str:
    return f"{SCRATCH}_ready_{loans}"


def next_night_database(loans: int) -> str:
    return f"{SCRATCH}_next_{loans}"


def _meta(database: str) -> dict[str, Any]:
    comment = close_bench.psql(
        f"SELECT shobj_description(oid, 'pg_database') FROM pg_database "
        f"WHERE datname = '{database}'"
    )
    return dict(json.loads(comment)) if comment.startswith("{") else {}


def _describe(database: str, meta: dict[str, Any]) -> None:
    quoted = json.dumps(meta).replace("'", "''")
    close_bench.psql(f"COMMENT ON DATABASE \"{database}\" IS '{quoted}'")


def prepare_next_night(loans: int, as_of: date, rebuild: bool) -> dict[str, Any]:
    """The book as the risk step meets it in the close of D + 1, D closed the night before."""
    night = next_night_database(loans)
    tomorrow = as_of + timedelta(days=1)
    if close_bench.exists(night) and not rebuild:
        meta = _meta(night)
        if meta.get("as_of") == tomorrow.isoformat():
            print(f"reusing {night}", flush=True)
            return meta
    print(f"preparing {night}: the rest of {as_of}'s close, then {tomorrow}'s first steps")
    steps = [("--finish-close", as_of), ("--run-steps", tomorrow)]
    meta = {"loans": loans, "as_of": tomorrow.isoformat(), "closed_before": as_of.isoformat()}
    return _derive(ready_database(loans), night, steps, meta)


def prepare(loans: int, as_of: date, seed: int, out: Path, rebuild: bool) -> dict[str, Any]:
    """The book as the risk step meets it in the close of D (cached as a database)."""
    close_bench.build_base(loans, as_of, seed, out, rebuild=False)
    ready = ready_database(loans)
    if close_bench.exists(ready) and not rebuild:
        meta = _meta(ready)
        if meta.get("as_of") == as_of.isoformat():
            print(f"reusing {ready}", flush=True)
            return meta
    print(f"preparing {ready}: steps {', '.join(STEPS_BEFORE_RISK)} for {as_of}", flush=True)
    steps = [("--run-steps", as_of)]
    meta = {"loans": loans, "as_of": as_of.isoformat(), "steps": list(STEPS_BEFORE_RISK)}
    return _derive(f"{close_bench.SCRATCH}_base_{loans}", ready, steps, meta)


def _derive(
    source: str, target: str, steps: list[tuple[str, date]], meta: dict[str, Any]
) -> dict[str, Any]:
    """Clone ``source`` as ``target``, run the child-process ``steps`` on it, ``VACUUM
    ANALYZE``, and describe it with ``meta`` (and how long the steps took)."""
    close_bench.clone(source, target)
    started = time.perf_counter()
    for flag, day in steps:
        subprocess.run(
            [sys.executable, __file__, flag, day.isoformat()],
            env=close_bench.env_for(target),
            check=True,
        )
    meta = {
        **meta,
        "steps_seconds": round(time.perf_counter() - started, 1),
        "prepared_at": datetime.now().isoformat(timespec="seconds"),
    }
    close_bench.psql("VACUUM ANALYZE", target)
    _describe(target, meta)
    return meta


async def _run_steps(as_of: date, steps: tuple[str, ...], part: int, parts: int) -> dict[str, Any]:
    from app.close import service as close
    from app.db import database

    counts: dict[str, int] = {}
    for step in steps:
        for low, high in (await close.chunks(step))[part::parts]:
            for name, value in (await close.run_chunk(step, as_of, low, high)).items():
                counts[name] = counts.get(name, 0) + value
    await database.dispose()
    return counts


async def _finish_close(as_of: date) -> None:
    """The steps of D's close after those ``prepare`` ran, and D recorded as closed."""
    from app.close import service as close
    from app.close.models import CloseRun, CloseStatus
    from app.db import session_scope, utc_now

    started = utc_now()
    rest = tuple(step for step in close.STEPS if step not in STEPS_BEFORE_RISK)
    counts = await _run_steps(as_of, rest, 0, 1)
    async with session_scope() as session:
        session.add(CloseRun(
            as_of=as_of, status=CloseStatus.SUCCEEDED, started_at=started,
            finished_at=utc_now(), heartbeat_at=utc_now(), attempts=1, counts=counts,
            steps={"risk": {"started_at": started.isoformat(), "status": "succeeded"}},
        ))  # fmt: skip
    print(counts, flush=True)


def baseline(as_of: date, database: str) -> dict[str, Any]:
    sql = BASELINE.format(as_of=as_of)
    close_bench.psql("DROP TABLE IF EXISTS risk_features_baseline", database)
    # The risk step's planner settings (no nested loops, no JIT), with more memory for a
    # statement over the whole book: without them PostgreSQL joins the per-loan aggregates
    # by nested loop (it estimates a windowed CTE's groups at 200) and ran for minutes.
    settings = "SET enable_nestloop = off; SET work_mem = '256MB'; SET jit = off;"
    # PostgreSQL may run the statement with parallel workers (max_parallel_workers_per_gather)
    # while one risk worker's chunk queries run on one backend: record how many it planned,
    # and time it once more on one backend, the fair floor for one worker.
    plan = close_bench.psql(settings + "EXPLAIN " + sql, database)
    planned = max((int(line.split(":")[1]) for line in plan.splitlines()
                   if "Workers Planned" in line), default=0)  # fmt: skip
    started = time.perf_counter()
    close_bench.psql(settings + sql, database)
    seconds = time.perf_counter() - started
    rows = int(close_bench.psql("SELECT count(*) FROM risk_features_baseline", database))
    close_bench.psql("DROP TABLE risk_features_baseline", database)
    started = time.perf_counter()
    close_bench.psql(settings + "SET max_parallel_workers_per_gather = 0;" + sql, database)
    serial_seconds = time.perf_counter() - started
    close_bench.psql("DROP TABLE IF EXISTS risk_features_simple", database)
    started = time.perf_counter()
    close_bench.psql("SET jit = off; SET work_mem = '256MB';" + SIMPLE.format(as_of=as_of),
                     database)  # fmt: skip
    simple_seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "rows": rows,
        "parallel_workers_planned": planned,
        "serial_seconds": round(serial_seconds, 2),
        "simple_seconds": round(simple_seconds, 2),
    }


def risk_step(as_of: date, workers: int, database: str) -> dict[str, Any]:
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--risk-part", as_of.isoformat(), str(part), str(workers)],
            env=close_bench.env_for(database),
            stdout=subprocess.PIPE,
            text=True,
        )
        for part in range(workers)
    ]
    counts: dict[str, int] = {}
    rss_mb = []
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        if status:
            raise RuntimeError("a risk worker failed")
        assert process.stdout is not None
        for name, value in json.loads(process.stdout.read()).items():
            counts[name] = counts.get(name, 0) + value
        rss_mb.append(round(usage.ru_maxrss / 1024))
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "counts": counts,
        "peak_rss_mb": rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loans", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", type=date.fromisoformat, help="D [yesterday]")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=900, help="seconds, per timed run")
    parser.add_argument("--rebuild", action="store_true", help="re-prepare the ready database")
    parser.add_argument("--out", type=Path, default=Path("/tmp/riskbench"))
    parser.add_argument("--night", choices=["first", "next"], default="first",
                        help="the first close of the book, or the night after it")  # fmt: skip
    # Internal: the child processes.
    parser.add_argument("--run-steps", type=date.fromisoformat, help=argparse.SUPPRESS)
    parser.add_argument("--finish-close", type=date.fromisoformat, help=argparse.SUPPRESS)
    parser.add_argument("--risk-part", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.run_steps:
        print(asyncio.run(_run_steps(args.run_steps, STEPS_BEFORE_RISK, 0, 1)), flush=True)
        return
    if args.finish_close:
        asyncio.run(_finish_close(args.finish_close))
        return
    if args.risk_part:
        from workers import runtime

        runtime.settle_garbage_collector()  # as a Celery worker process does after its fork
        as_of, part, parts = args.risk_part
        counts = asyncio.run(
            _run_steps(date.fromisoformat(as_of), ("risk",), int(part), int(parts))
        )
        print(json.dumps(counts))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    zone = ZoneInfo(os.environ.get("LOANWATCH_TIMEZONE", "Asia/Shanghai"))
    as_of = args.as_of or datetime.now(zone).date() - timedelta(days=1)
    ready = prepare(args.loans, as_of, args.seed, args.out, args.rebuild)
    book = ready_database(args.loans)
    if args.night == "next":
        ready = prepare_next_night(args.loans, as_of, args.rebuild)
        book, as_of = next_night_database(args.loans), as_of + timedelta(days=1)
    results: dict[str, Any] = {
        "loans": args.loans,
        "as_of": as_of.isoformat(),
        "night": args.night,
        "commit": close_bench.commit(),
        "ready": ready,
        "runs": [],
    }
    for workers in args.workers:
        close_bench.clone(book, SCRATCH)
        load = close_bench.wait_for_quiet(args.max_load, args.max_wait)
        base = baseline(as_of, SCRATCH)
        print(f"  baseline: {base}", flush=True)
        step = risk_step(as_of, workers, SCRATCH)
        run = {
            "workers": workers,
            "load_before": load,
            "baseline": base,
            "step": step,
            "loans_per_second": round(base["rows"] / step["seconds"]),
            "ratio": round(step["seconds"] / base["seconds"], 2),
            "ratio_to_serial": round(step["seconds"] / base["serial_seconds"], 2),
            "ratio_to_simple": round(step["seconds"] / base["simple_seconds"], 2),
        }
        print(f"  {workers} worker(s): {run}", flush=True)
        results["runs"].append(run)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    close_bench.psql(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['loans']:,} loans, risk step for {results['as_of']} "
        f"({results.get('night', 'first')} night) at commit "
        f"{results['commit']}:",
        "",
        "| workers | open loans | baseline: same features (s) | its parallel workers planned "
        "| same features on one backend (s) | issue's simpler statement (s) "
        "| risk step (s) | loans/s | ratio step/same features | ratio step/one backend "
        "| ratio step/simpler | flags raised | peak RSS per worker (MB) | load before |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | ---: |",
    ]
    for run in results["runs"]:
        base = run["baseline"]
        lines.append(
            f"| {run['workers']} | {base['rows']:,} | {base['seconds']} "
            f"| {base['parallel_workers_planned']} | {base['serial_seconds']} "
            f"| {base['simple_seconds']} | {run['step']['seconds']} "
            f"| {run['loans_per_second']:,} | {run['ratio']} | {run['ratio_to_serial']} "
            f"| {run['ratio_to_simple']} "
            f"| {run['step']['counts'].get('flags_raised', 0):,} "
            f"| {', '.join(map(str, run['step']['peak_rss_mb']))} | {run['load_before']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
