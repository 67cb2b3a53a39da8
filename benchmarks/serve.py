"""Latency and throughput of ``python -m stream serve`` on loopback, measured with ``wrk``.

Starts the embedded broker, writes one recommendation record (10 items, ~1 kB, like the
worker's) for each of N users (default 100,000) to a fresh topic, starts ``python -m stream
serve`` as its own process, waits for ``/readyz``, then runs Debian's ``wrk`` (installed with
``apt-get install -y wrk`` when missing and running as root) against
``GET /users/{random user}/recommendations``:

1. paced: ``wrk`` has no constant-rate mode (that is ``wrk2``, not in Debian), so each
   connection waits a fixed delay after every response (a Lua ``delay()``, 25 ms); two short
   calibration runs tune the number of connections so the achieved rate lands near
   ``--rate`` (2,000/s);
2. unpaced: as fast as ``--max-connections`` keep-alive connections go (the maximum rate).

Prints p50/p90/p99/p99.9 latency and requests/s of each run; asserts nothing. Latency is
``wrk``'s (request written → response read). Pacing by delay is closed-loop: a stalled
response also holds back its connection's next request, so a stall is counted once, not once
per request it delays (the "coordinated omission" ``wrk2`` corrects).

    python benchmarks/serve.py [--users 100000] [--rate 2000] [--duration 30]
                               [--delay-ms 25] [--max-connections 32] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _common import fmt, print_table, quiet_logging, write_json
from kafka import KafkaProducer

from stream.broker import EmbeddedBroker
from stream.events import Recommendation, RecommendedItem
from stream.kafka.admin import COMPACTED, ensure_topics
from stream.settings import StreamSettings

__all__ = ["main"]

LUA = """
local users = %(users)d
local pause = %(pause)d
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 100 + seed)
end

function request()
  return wrk.format("GET", "/users/u" .. math.random(0, users - 1) .. "/recommendations")
end

if pause > 0 then
  function delay() return pause end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "p999_us": %%d, "max_us": %%d, "mean_us": %%.1f, "non_2xx": %%d, ' ..
    '"socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("wrk is missing: install it (Debian/Ubuntu: sudo apt-get install -y wrk)")
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        sys.exit("apt-get installed no wrk binary")
    return found


def _record(user: str, rank: int) -> bytes:
    items = [
        RecommendedItem(
            item_id=f"i{(rank * 7 + j * 13) % 5000}",
            score=round(1.0 - j * 0.07, 4),
            reason=f"because you interacted with i{(rank + j) % 5000}",
        )
        for j in range(10)
    ]
    return (
        Recommendation(
            user_id=user,
            items=items,
            model="blend",
            source_topic="events",
            source_partition=0,
            source_offset=rank,
            event_timestamp=1_795_000_000.0 + rank,
        )
        .model_dump_json()
        .encode()
    )


def _fill(bootstrap: str, topic: str, users: int) -> float:
    started = time.perf_counter()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], linger_ms=20, acks=1, enable_idempotence=False
    )
    try:
        for n in range(users):
            user = f"u{n}"
            producer.send(topic, key=user.encode(), value=_record(user, n))
        producer.flush(timeout=300)
    finally:
        producer.close(timeout=10)
    return time.perf_counter() - started


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _run_wrk(
    wrk: str, url: str, users: int, pause_ms: int, connections: int, seconds: float
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"users": users, "pause": pause_ms})
        script = f.name
    try:
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "5s",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["pause_ms"] = pause_ms
    result["connections"] = connections
    return result


def _paced(
    wrk: str, url: str, users: int, rate: float, pause_ms: int, seconds: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Calibrate the number of connections twice (5 s runs), then measure for ``seconds``.

    Each connection sends one request per ``pause_ms`` + response time, so the rate is
    ``connections / (pause + time per request)``; the delay has a 1 ms granularity, the
    connection count a finer one at a pause of tens of milliseconds.
    """
    per_request_ms = 1.0
    connections = max(1, round(rate * (pause_ms + per_request_ms) / 1000))
    calibration = []
    for _ in range(2):
        trial = _run_wrk(wrk, url, users, pause_ms, connections, 5)
        calibration.append(trial)
        per_request_ms = connections * 1000 / trial["rps"] - pause_ms
        connections = max(1, round(rate * (pause_ms + per_request_ms) / 1000))
    return _run_wrk(wrk, url, users, pause_ms, connections, seconds), calibration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="target requests/s")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measured run")
    parser.add_argument(
        "--delay-ms", type=int, default=25, help="pause after each response, paced run"
    )
    parser.add_argument("--max-connections", type=int, default=32, help="connections, max run")
    parser.add_argument("--json", default=None, help="also write the figures to FILE (- = stdout)")
    ns = parser.parse_args(argv)
    quiet_logging()
    wrk = _wrk()
    topic = f"bench-recommendations-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker:
        settings = StreamSettings(_env_file=None, bootstrap_servers=broker.bootstrap)  # type: ignore[call-arg]
        ensure_topics(settings, {topic: 1}, timeout_s=30, configs={topic: COMPACTED})
        print(f"writing {ns.users:,} recommendation records to {topic} ...", flush=True)
        fill_s = _fill(broker.bootstrap, topic, ns.users)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
        env.update(
            STREAM_BOOTSTRAP_SERVERS=broker.bootstrap,
            STREAM_RECOMMENDATIONS_TOPIC=topic,
            STREAM_LOG_LEVEL="WARNING",
        )
        started = time.perf_counter()
        serve = subprocess.Popen(
            [sys.executable, "-m", "stream", "serve", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert serve.stdout is not None
            banner = serve.stdout.readline()
            if "http://" not in banner:
                sys.exit(f"stream serve did not start: {banner!r}")
            base = "http://" + banner.split("http://", 1)[1].split("/users/", 1)[0]
            while _get(base + "/readyz")[0] != 200:
                if serve.poll() is not None:
                    sys.exit(f"stream serve exited with {serve.returncode}")
                time.sleep(0.1)
            ready_s = time.perf_counter() - started
            _, body = _get(base + "/readyz")
            users = json.loads(body)["users"]
            print(
                f"serve ready in {ready_s:.1f}s with {users:,} users; running wrk ...", flush=True
            )
            paced, calibration = _paced(wrk, base, ns.users, ns.rate, ns.delay_ms, ns.duration)
            unpaced = _run_wrk(wrk, base, ns.users, 0, ns.max_connections, ns.duration)
            rss_kb = _rss_kb(serve.pid)
        finally:
            serve.terminate()
            serve.wait(timeout=30)

    rows = []
    for name, r in (("paced", paced), ("max (no delay)", unpaced)):
        rows.append(
            [
                name,
                str(r["connections"]),
                str(r["pause_ms"]),
                fmt(round(r["rps"])),
                fmt(r["p50_us"] / 1000, 2),
                fmt(r["p90_us"] / 1000, 2),
                fmt(r["p99_us"] / 1000, 2),
                fmt(r["p999_us"] / 1000, 2),
                fmt(r["max_us"] / 1000, 2),
                fmt(r["non_2xx"] + r["socket_errors"]),
            ]
        )
    print_table(
        [
            "run",
            "conns",
            "delay ms",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
        ],
        rows,
        title=f"stream serve, {users:,} users, wrk on loopback ({ns.duration:g}s per run)",
    )
    print(
        f"\nfill {ns.users:,} records {fill_s:.1f}s; serve ready {ready_s:.1f}s after start; "
        f"serve RSS {rss_kb / 1024:.0f} MiB"
    )
    target = (
        "met"
        if paced["p99_us"] < 10_000 and abs(paced["rps"] - ns.rate) / ns.rate < 0.1
        else "NOT met"
    )
    print(
        f"target p99 < 10 ms at {ns.rate:,.0f} req/s: {target} "
        f"(p99 {paced['p99_us'] / 1000:.2f} ms at {paced['rps']:,.0f} req/s)"
    )
    if ns.json:
        write_json(
            ns.json,
            {
                "users": users,
                "fill_seconds": fill_s,
                "ready_seconds": ready_s,
                "rss_kb": rss_kb,
                "paced": paced,
                "calibration": calibration,
                "max": unpaced,
            },
        )
    return 0


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
