"""HTTP load on PostgreSQL: the API against a bare asyncpg baseline, with wrk.

One run, start to finish:

1. drops and recreates a scratch database (``loanwatch_bench``), runs ``loanwatch migrate``
   and creates an admin key with ``loanwatch api-keys create --role admin``;
2. through the API: a merchant, its key, product ``BENCH12`` (12 months), ``--borrowers``
   borrowers whose credit limit an admin raises to 100,000,000.00 (limits never bind) and
   ``--loans`` loans for the payment and GET phases; then the close of yesterday
   (``loanwatch close``), so that a payment runs what it runs on a live book (its loan's
   delinquency, promises and risk evaluated at once: before any close the risk step returns
   early), and ``VACUUM ANALYZE``;
3. serves the API on one uvicorn worker (``loanwatch serve``, log level warning) and runs each
   phase with ``wrk -t2 -c32 -d15s --latency --timeout=10s``, after a short unmeasured
   warm-up of the same phase and a ``CHECKPOINT``; every POST carries a unique
   Idempotency-Key and merchant_order_ref / external_ref;
4. serves ``bench/baseline_app.py`` (one uvicorn worker) and runs the same phases on it;
5. prints a markdown table: requests/s, p50, p99, the API/baseline ratio, non-2xx responses
   and socket errors (a phase with either is invalid), rows written, and the CPU (in cores)
   used by the server, PostgreSQL (this database's backends and the shared background
   processes), wrk and everything else on the machine ("other": other work skews a run).
   With ``--profile N``, an extra unmeasured run of each phase follows the API's measured
   phases, with py-spy attached to the API process for N seconds, and the hottest frames
   are summarised.

Needs wrk (``apt-get install -y wrk``) and PostgreSQL on 127.0.0.1:5432 (user postgres,
trust auth). Raw wrk output, the py-spy profile and the report go to ``--out``.

    .venv/bin/python bench/http_load.py --profile 10
"""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import close_bench  # a sibling script, not a package: the commit benchmarked

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
WRK_SCRIPTS = BENCH / "wrk"
PRODUCT_CODE = "BENCH12"  # bench/wrk/create_loan.lua asks for this product
UNLIMITED = "100000000.00"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Phase:
    name: str
    script: str
    ids: str  # "borrowers" or "loans": what the script picks at random
    table: str  # the table one request adds a row to ("" for reads)
    target_ratio: float | None


PHASES = (
    Phase("POST /v1/loans", "create_loan.lua", "borrowers", "loan", 0.5),
    Phase("POST /v1/loans/{id}/payments", "record_payment.lua", "loans", "payment", None),
    Phase("GET /v1/loans/{id}", "get_loan.lua", "loans", "", 0.5),
)


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    raw: str = field(repr=False)

    @property
    def valid(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0 and self.requests > 0


@dataclass
class PhaseResult:
    wrk: WrkResult
    rows_written: int | None
    cpu_server: float  # cores used on average during the phase
    cpu_postgres: float
    cpu_wrk: float
    cpu_other: float  # everything else on the machine: other work skews the figures


@dataclass
class Config:
    duration: int
    connections: int
    threads: int
    timeout: int
    warmup: int
    borrowers: int
    loans: int
    admin_dsn: str
    database: str
    api_port: int
    baseline_port: int
    profile: int
    out: Path

    @property
    def dsn(self) -> str:
        return f"{self.admin_dsn.rsplit('/', 1)[0]}/{self.database}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@dataclass
class Fixture:
    admin_key: str
    merchant_id: str
    merchant_key: str
    borrowers_file: Path
    loans_file: Path

    def ids_file(self, phase: Phase) -> Path:
        return self.borrowers_file if phase.ids == "borrowers" else self.loans_file


# -- the database and the CLI ------------------------------------------------------------


async def recreate_database(config: Config) -> None:
    conn = await asyncpg.connect(config.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{config.database}"')
    finally:
        await conn.close()


async def sql(config: Config, statement: str) -> None:
    conn = await asyncpg.connect(config.dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def count_rows(config: Config, table: str) -> int:
    conn = await asyncpg.connect(config.dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def api_env(config: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOANWATCH_")}
    env["LOANWATCH_DATABASE_URL"] = config.sqlalchemy_url
    env["LOANWATCH_LOG_LEVEL"] = "warning"
    return env


def loanwatch(config: Config, *args: str) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "loanwatch"), *args],
        env=api_env(config),
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


# -- servers -----------------------------------------------------------------------------


@contextmanager
def serving(command: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """Run a server until the block ends; yields its pid once it answers HTTP."""
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start on port {port}") from None
                time.sleep(0.2)
        yield process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_api(config: Config) -> tuple[list[str], dict[str, str]]:
    command = [str(VENV_BIN / "loanwatch"), "serve", "--host", "127.0.0.1"]
    return [*command, "--port", str(config.api_port)], api_env(config)


def serve_baseline(config: Config, fixture: Fixture) -> tuple[list[str], dict[str, str]]:
    command = [
        str(VENV_BIN / "uvicorn"), "--app-dir", str(BENCH), "baseline_app:app",
        "--host", "127.0.0.1", "--port", str(config.baseline_port), "--log-level", "warning",
    ]  # fmt: skip
    env = {
        **os.environ,
        "BENCH_DATABASE_DSN": config.dsn,
        "BENCH_MERCHANT_ID": fixture.merchant_id,
        "BENCH_PRODUCT_CODE": PRODUCT_CODE,
    }
    return command, env


# -- the fixture, through the API -----------------------------------------------------------


async def create_fixture(config: Config, admin_key: str) -> Fixture:
    base = f"http://127.0.0.1:{config.api_port}"
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def post(key: str, path: str, body: object, idempotency_key: str = "") -> str:
            headers = {"Authorization": f"Bearer {key}"}
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
            response = await client.post(path, json=body, headers=headers)
            if response.status_code != 201:
                raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
            return str(response.json().get("id") or response.json().get("code"))

        merchant_id = await post(admin_key, "/v1/merchants", {"name": "Bench Appliances"})
        response = await client.post(
            "/v1/api-keys",
            json={"role": "merchant", "merchant_id": merchant_id},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        response.raise_for_status()
        merchant_key = str(response.json()["key"])
        product = {
            "code": PRODUCT_CODE, "name": "Bench, 12 months", "annual_interest_rate": "0.1299",
            "amortization": "equal_installment", "term_options": [12], "grace_days": 3,
            "late_fee": {"kind": "fixed", "amount": "25.00", "cap_per_installment": "50.00"},
        }  # fmt: skip
        await post(admin_key, "/v1/products", product)

        gate = asyncio.Semaphore(16)

        async def borrower(n: int) -> str:
            async with gate:
                body = {
                    "external_id": f"bench-{n}",
                    "name": f"Borrower {n}",
                    "phone": f"+86138{n:08d}",
                    "monthly_income": "8000.00",
                }
                borrower_id = await post(merchant_key, "/v1/borrowers", body)
                response = await client.patch(
                    f"/v1/borrowers/{borrower_id}",
                    json={"credit_limit": UNLIMITED},
                    headers={"Authorization": f"Bearer {admin_key}"},
                )
                response.raise_for_status()
                return borrower_id

        borrowers = await asyncio.gather(*(borrower(n) for n in range(config.borrowers)))

        async def loan(n: int) -> str:
            async with gate:
                body = {
                    "borrower_id": borrowers[n % len(borrowers)],
                    "product_code": PRODUCT_CODE,
                    "principal": f"{1000 + n % 8000}.00",
                    "term": 12,
                    "merchant_order_ref": f"setup-{n}",
                }
                return await post(merchant_key, "/v1/loans", body, f"setup-{n}")

        loans = await asyncio.gather(*(loan(n) for n in range(config.loans)))

    borrowers_file, loans_file = config.out / "borrowers.txt", config.out / "loans.txt"
    borrowers_file.write_text("\n".join(borrowers) + "\n")
    loans_file.write_text("\n".join(loans) + "\n")
    return Fixture(admin_key, merchant_id, merchant_key, borrowers_file, loans_file)


# -- wrk -----------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str, default: str | None = None) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            if default is None:
                raise ValueError(f"wrk output has no {pattern!r}:\n{output}")
            return default
        return match.group(1)

    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests_per_s=float(find(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)")),
        requests=int(find(r"^\s+(\d+) requests in")),
        non_2xx=int(find(r"Non-2xx or 3xx responses: (\d+)", "0")),
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        raw=output,
    )


def wrk(config: Config, phase: Phase, fixture: Fixture, url: str, prefix: str, tag: str,
        seconds: int) -> WrkResult:  # fmt: skip
    command = [
        "wrk", f"-t{config.threads}", f"-c{config.connections}", f"-d{seconds}s", "--latency",
        f"--timeout={config.timeout}s",
        "-s", str(WRK_SCRIPTS / phase.script), url,
        "--", fixture.merchant_key, prefix, str(fixture.ids_file(phase)), tag,
    ]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    if done.stderr.strip():
        print(done.stderr, file=sys.stderr)
    return parse_wrk(done.stdout)


# -- CPU accounting ------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat; [0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds of the PostgreSQL processes serving ``database``: its backends and the
    shared background processes (WAL writer, checkpointer...), not other databases' backends,
    whose title reads ``postgres: 15/main: user db host(port) state``."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if f" {database} " in title or "(" not in title:
                found[int(entry.name)] = _cpu_seconds(int(entry.name))
    return found


def _postgres_cpu_since(database: str, before: dict[int, float]) -> float:
    """CPU used since ``before`` by the processes alive now (a backend that exited in between
    is left out rather than counted negative)."""
    return sum(now - before.get(pid, 0.0) for pid, now in _postgres_cpu(database).items())


def _machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores; idle and iowait excluded)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- py-spy --------------------------------------------------------------------------------

PROFILE_RATE = 100  # samples per second


def _frame_key(frame: str) -> str:
    """``function (path:line)`` -> ``function (path)``."""
    return re.sub(r":\d+\)$", ")", frame)


def _package(frame: str) -> str:
    """The distribution (``sqlalchemy``), ``app`` or ``stdlib:<module>`` a frame runs in."""
    match = re.search(r"\((.*)\)$", frame)
    path = match.group(1) if match else frame
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    top, _, rest = path.partition("/")
    if rest and top not in ("asyncio", "json", "logging", "email", "http", "concurrent"):
        return top
    return f"stdlib:{top.removesuffix('.py')}" if rest or top.endswith(".py") else top


def _is_request_step(frame: str) -> bool:
    """Frames worth an inclusive figure: the app's own and FastAPI's validation and
    serialisation (not the server, the CLI or the middleware plumbing around everything)."""
    if "(app/" in frame:
        return "(app/cli.py)" not in frame
    return frame.startswith(FASTAPI_STEPS) and "(fastapi/" in frame


FASTAPI_STEPS = ("solve_dependencies ", "serialize_response ", "request_body_to_args ")


def summarise_profile(raw: str, seconds: int, top: int = 15) -> str:
    """Markdown tables from py-spy's raw (collapsed-stack) output, all threads together.

    SQLAlchemy runs the synchronous ORM inside greenlets; py-spy shows a greenlet's frames
    without the coroutine that started it, so the inclusive figures of ``app`` frames leave out
    the ORM work they caused. The share of such detached samples is printed."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = detached = threads = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")]
        total += count
        if frames[0].startswith("Thread._bootstrap"):
            threads += count
        elif not frames[0].startswith("<module>"):
            detached += count
        self_time[frames[-1]] += count
        by_package[_package(frames[-1])] += count
        for frame in set(frames):
            if _is_request_step(frame):
                inclusive[frame] += count
    if total == 0:
        return "py-spy recorded no samples\n"

    def table(title: str, counts: Counter[str]) -> list[str]:
        rows = [f"| {title} | % of samples |", "| --- | ---: |"]
        rows += [f"| `{k}` | {100 * n / total:.1f} |" for k, n in counts.most_common(top)]
        return [*rows, ""]

    busy = 100 * (total - threads) / (seconds * PROFILE_RATE)
    return "\n".join(
        [
            f"{total} samples in {seconds} s at {PROFILE_RATE} Hz. The event loop's thread was "
            f"busy (not waiting in epoll) {busy:.0f} % of the time; of all samples "
            f"{100 * detached / total:.0f} % ran in SQLAlchemy greenlets (detached from their "
            f"callers) and {100 * threads / total:.0f} % in other threads.",
            "",
            *table("package of the running frame (self time)", by_package),
            *table("function (self time)", self_time),
            *table("app function, FastAPI step (inclusive)", inclusive),
        ]
    )


def profile_phase(config: Config, fixture: Fixture, pid: int, number: int) -> str:
    """An unmeasured run of one phase with py-spy attached for ``config.profile`` seconds."""
    phase, output = PHASES[number], config.out / f"pyspy-api-{number}.txt"
    load = subprocess.Popen(
        [
            "wrk", f"-t{config.threads}", f"-c{config.connections}",
            f"-d{config.profile + 4}s", "-s", str(WRK_SCRIPTS / phase.script),
            f"http://127.0.0.1:{config.api_port}", "--", fixture.merchant_key, "/v1",
            str(fixture.ids_file(phase)), f"prof{int(time.time())}p{number}",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2)
        subprocess.run(
            [
                str(VENV_BIN / "py-spy"), "record", "--pid", str(pid),
                "--duration", str(config.profile), "--rate", str(PROFILE_RATE),
                "--format", "raw", "--output", str(output),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        load.wait()
    return summarise_profile(output.read_text(), config.profile)


# -- the run -------------------------------------------------------------------------------


def run_phases(config: Config, fixture: Fixture, pid: int, target: str, url: str,
               prefix: str) -> dict[str, PhaseResult]:  # fmt: skip
    results: dict[str, PhaseResult] = {}
    for number, phase in enumerate(PHASES):
        tag = f"{target}{int(time.time())}p{number}"
        if config.warmup:
            wrk(config, phase, fixture, url, prefix, f"{tag}w", config.warmup)
        asyncio.run(sql(config, "CHECKPOINT"))
        before_rows = asyncio.run(count_rows(config, phase.table)) if phase.table else 0
        server0, pg0, wrk0 = (
            _cpu_seconds(pid),
            _postgres_cpu(config.database),
            _children_cpu_seconds(),
        )
        machine0 = _machine_cpu_seconds()
        started = time.monotonic()
        result = wrk(config, phase, fixture, url, prefix, tag, config.duration)
        elapsed = time.monotonic() - started
        server = _cpu_seconds(pid) - server0
        postgres = _postgres_cpu_since(config.database, pg0)
        wrk_used = _children_cpu_seconds() - wrk0
        other = _machine_cpu_seconds() - machine0 - server - postgres - wrk_used
        rows = None
        if phase.table:
            time.sleep(0.5)  # requests cut off by wrk's stop may still commit
            rows = asyncio.run(count_rows(config, phase.table)) - before_rows
        results[phase.name] = PhaseResult(
            wrk=result,
            rows_written=rows,
            cpu_server=server / elapsed,
            cpu_postgres=postgres / elapsed,
            cpu_wrk=wrk_used / elapsed,
            cpu_other=max(other, 0.0) / elapsed,
        )
        (config.out / f"wrk-{target}-{number}.txt").write_text(result.raw)
        print(
            f"  {target:8} {phase.name:30} {result.requests_per_s:9.1f} req/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"non-2xx {result.non_2xx}  socket errors {result.socket_errors}",
            flush=True,
        )
    return results


def load_average() -> str:
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def report(config: Config, api: dict[str, PhaseResult], base: dict[str, PhaseResult],
           loads: dict[str, str]) -> str:  # fmt: skip
    def ms(value: float) -> str:
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"

    lines = [
        f"At commit {close_bench.commit()}: "
        f"wrk -t{config.threads} -c{config.connections} -d{config.duration}s --latency "
        f"--timeout={config.timeout}s, "
        f"loopback, one uvicorn worker each; {config.borrowers} borrowers, "
        f"{config.loans} pre-created loans; load average (1/5/15 min) before the API: "
        f"{loads['api']}, before the baseline: {loads['baseline']}.",
        "",
        "| endpoint | API req/s | API p50 ms | API p99 ms | baseline req/s | baseline p50 ms "
        "| baseline p99 ms | ratio API/baseline | target | ratio per server CPU-second |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for phase in PHASES:
        a, b = api[phase.name].wrk, base[phase.name].wrk
        ratio = a.requests_per_s / b.requests_per_s if b.requests_per_s else 0.0
        # Requests per CPU-second of the server process: less sensitive to other work on the
        # machine than requests/s when both servers are CPU-bound.
        a_cpu, b_cpu = api[phase.name].cpu_server, base[phase.name].cpu_server
        per_cpu = ratio * b_cpu / a_cpu if a_cpu else 0.0
        target = "—"
        if phase.target_ratio is not None:
            met = "met" if ratio >= phase.target_ratio else "**missed**"
            target = f">= {phase.target_ratio} {met}"
        lines.append(
            f"| `{phase.name}` | {a.requests_per_s:,.0f} | {ms(a.p50_ms)} | {ms(a.p99_ms)} "
            f"| {b.requests_per_s:,.0f} | {ms(b.p50_ms)} | {ms(b.p99_ms)} | {ratio:.2f} "
            f"| {target} | {per_cpu:.2f} |"
        )
    lines += [
        "",
        "| endpoint | target | requests | non-2xx | socket errors | rows written "
        "| CPU server (cores) | CPU PostgreSQL | CPU wrk | CPU other |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase in PHASES:
        for target, results in (("API", api), ("baseline", base)):
            r = results[phase.name]
            rows = "—" if r.rows_written is None else f"{r.rows_written:,}"
            lines.append(
                f"| `{phase.name}` | {target} | {r.wrk.requests:,} | {r.wrk.non_2xx} "
                f"| {r.wrk.socket_errors} | {rows} | {r.cpu_server:.2f} | {r.cpu_postgres:.2f} "
                f"| {r.cpu_wrk:.2f} | {r.cpu_other:.2f} |"
            )
    invalid = [
        f"{target} {name}"
        for target, results in (("API", api), ("baseline", base))
        for name, r in results.items()
        if not r.wrk.valid
    ]
    lines += ["", f"INVALID (errors): {', '.join(invalid)}" if invalid else "All responses 2xx."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--timeout", type=int, default=10,
        help="seconds before wrk counts a request as a socket error (wrk's default is 2)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured seconds per phase")
    parser.add_argument("--borrowers", type=int, default=1000)
    parser.add_argument("--loans", type=int, default=2000, help="pre-created for GET/payments")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="loanwatch_bench", help="dropped and recreated")
    parser.add_argument("--api-port", type=int, default=8031)
    parser.add_argument("--baseline-port", type=int, default=8032)
    parser.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS",
        help="py-spy the API during an extra, unmeasured run of each phase (0: off)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    config = Config(
        duration=args.duration, connections=args.connections, threads=args.threads,
        timeout=args.timeout,
        warmup=args.warmup, borrowers=args.borrowers, loans=args.loans,
        admin_dsn=args.admin_dsn, database=args.database, api_port=args.api_port,
        baseline_port=args.baseline_port, profile=args.profile, out=args.out / stamp,
    )  # fmt: skip
    config.out.mkdir(parents=True, exist_ok=True)

    print(f"scratch database {config.database}; results in {config.out}", flush=True)
    asyncio.run(recreate_database(config))
    loanwatch(config, "migrate")
    admin_key = loanwatch(config, "api-keys", "create", "--role", "admin")
    started = time.monotonic()
    with serving(*serve_api(config), config.api_port):
        fixture = asyncio.run(create_fixture(config, admin_key))
    loanwatch(config, "close", "--as-of", (date.today() - timedelta(days=1)).isoformat())
    asyncio.run(sql(config, "VACUUM ANALYZE"))
    print(f"fixture ready in {time.monotonic() - started:.0f} s", flush=True)

    loads: dict[str, str] = {}
    profile = ""
    loads["api"] = load_average()
    api_url = f"http://127.0.0.1:{config.api_port}"
    with serving(*serve_api(config), config.api_port) as pid:
        api = run_phases(config, fixture, pid, "api", api_url, "/v1")
        if config.profile:
            for number, phase in enumerate(PHASES):
                profile += f"\n## py-spy: the API during {phase.name}\n\n"
                profile += profile_phase(config, fixture, pid, number)
    loads["baseline"] = load_average()
    base_url = f"http://127.0.0.1:{config.baseline_port}"
    with serving(*serve_baseline(config, fixture), config.baseline_port) as pid:
        base = run_phases(config, fixture, pid, "base", base_url, "")

    text = report(config, api, base, loads)
    text += profile
    (config.out / "report.md").write_text(text)
    (config.out / "results.json").write_text(
        json.dumps(
            {
                "commit": close_bench.commit(),
                "config": {k: str(v) for k, v in asdict(config).items()},
                "load_average": loads,
                "api": {k: asdict(v) for k, v in api.items()},
                "baseline": {k: asdict(v) for k, v in base.items()},
            },
            indent=2,
        )
    )
    print()
    print(text)
    valid = all(r.wrk.valid for results in (api, base) for r in results.values())
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
