"""How much load one `iofleet loadtest` process generates, measured.

    .venv/bin/python examples/loadtest/generator_ceiling.py [--connections 10000] [--seconds 20]

Three runs, each bounded in time, on 127.0.0.1:
1. connections: many users against the echo sink (`iofleet.loadtest.sink`), one acked
   message each every 5 s: can one process open and hold them?
2. messages: 1,000 users against the sink, each sending acked messages as fast as the
   acks come back (think 0.02 s): acked messages per second and per CPU-second.
3. against a real server (one `python -m server`, chat rooms of 10): CPU seconds the
   generator spends per CPU second of the server, so you can see which one is the
   bottleneck.

CPU time is read from /proc for the generator and the target (psutil), so the figures
hold on a machine shared with other work: per CPU-second rates do not depend on what
share of a core each process got.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from iofleet.processes import free_port, http_status, tcp_answers, wait_until

REPO = Path(__file__).resolve().parents[2]
IOFLEET = str(Path(sys.executable).with_name("iofleet"))


def scenario(users: int, ramp_seconds: float, hold_seconds: float, think: float, rooms: int) -> str:
    rate = users / ramp_seconds
    count = int((ramp_seconds + hold_seconds) / max(think, 0.01)) + 10
    names = ", ".join(f"room-{n}" for n in range(1, rooms + 1))
    return f"""
config:
  phases:
    - {{name: ramp, duration: {ramp_seconds}, arrivalRate: {rate}, maxVusers: {users}}}
    - {{name: hold, duration: {hold_seconds}, arrivalRate: 0}}
  connectTimeout: 30
  ackTimeout: 30
  variables:
    room: [{names}]
scenarios:
  - flow:
      - connect: {{auth: none}}
      - join: "{{{{ room }}}}"
      - loop:
          - emit:
              channel: "chat:message"
              data: {{room: "{{{{ room }}}}", text: "x{{{{ $mark }}}}"}}
              acknowledge: true
          - think: {think}
        count: {count}
"""


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run(name: str, target: str, text: str, target_process: psutil.Process) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        handle.write(text)
    target_before = cpu_seconds(target_process)
    started = time.monotonic()
    generator = subprocess.Popen(
        [IOFLEET, "loadtest", handle.name, "--target", target, "--json", "--grace", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    watched = psutil.Process(generator.pid)
    peak_rss = 0
    generator_cpu = 0.0
    while generator.poll() is None:
        try:
            peak_rss = max(peak_rss, watched.memory_info().rss)
            generator_cpu = cpu_seconds(watched)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    out, _ = generator.communicate()
    os.unlink(handle.name)
    summary = json.loads(out)["summary"]
    wall = time.monotonic() - started
    target_cpu = cpu_seconds(target_process) - target_before
    acked = summary["acked"]
    return {
        "run": name,
        "peak connections": summary["peak_connections"],
        "errors": sum(summary["errors"].values()),
        "acked messages": acked,
        "deliveries": summary["delivered"],
        "wall s": round(wall, 1),
        "generator CPU s": round(generator_cpu, 1),
        "target CPU s": round(target_cpu, 1),
        "acked msg per generator CPU-s": round(acked / generator_cpu) if generator_cpu else 0,
        "frames per generator CPU-s": (
            round((2 * acked + summary["delivered"]) / generator_cpu) if generator_cpu else 0
        ),
        "generator peak RSS MB": round(peak_rss / 2**20),
        "ack p50/p99 ms": f"{summary['ack_ms']['p50']:.1f}/{summary['ack_ms']['p99']:.1f}",
    }


def start(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until(lambda: tcp_answers("127.0.0.1", port), 20, argv[-1], process)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure one load generator process.")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    results = []
    sink_port = free_port()
    sink = start(
        [sys.executable, "-m", "iofleet.loadtest.sink", "--port", str(sink_port)],
        dict(os.environ),
        sink_port,
    )
    try:
        sink_url = f"http://127.0.0.1:{sink_port}"
        ramp = max(5.0, args.connections / 1000)
        results.append(
            run(
                "connections (sink)",
                sink_url,
                scenario(args.connections, ramp, args.seconds, 5.0, 100),
                psutil.Process(sink.pid),
            )
        )
        results.append(
            run(
                "messages (sink)",
                sink_url,
                scenario(1000, 5, args.seconds, 0.02, 1000),
                psutil.Process(sink.pid),
            )
        )
    finally:
        sink.kill()
        sink.wait()
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "IOFLEET_HOST": "127.0.0.1",
        "IOFLEET_PORT": str(port),
        "IOFLEET_ADMIN_PORT": str(admin),
        "IOFLEET_AUTH": "none",
        "IOFLEET_RATE_LIMIT": "1000",
        "IOFLEET_MAX_CONNECTIONS": "100000",
        "IOFLEET_NODE_ID": "bench",
    }
    server = start([sys.executable, "-m", "server"], env, port)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{admin}/readyz") == 200, 20, "server")
        results.append(
            run(
                "chat rooms of 10 (server)",
                f"http://127.0.0.1:{port}",
                scenario(1000, 5, args.seconds, 0.5, 100),
                psutil.Process(server.pid),
            )
        )
    finally:
        server.kill()
        server.wait()
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
