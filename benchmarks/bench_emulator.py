"""5. Emulator throughput: status GETs per second the emulator sustains (its own process, 127.0.0.1).

The load generator is deliberately thin (raw HTTP/1.1 over asyncio streams, keep-alive, one request in
flight per connection, ``Content-Length`` framing) so that the emulator, not the client, is the bottleneck;
the emulator's own CPU use is read with psutil to show it. Requests rotate over many PROCESSING jobs.
(``benchmarks/emulator_throughput.py`` is the emulator's own, requests-based check.)

    python benchmarks/bench_emulator.py --duration 5 --connections 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Emulator, emit, percentile


def _token(emu: Emulator) -> str:
    import json

    body = (
        f"grant_type=client_credentials&client_id={emu.client_id}&client_secret={emu.client_secret}"
    ).encode()
    request = urllib.request.Request(emu.token_url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["access_token"])


async def _load(
    host: str, port: int, paths: list[bytes], token: str, connections: int, duration: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + duration
    head = b"Host: %s:%d\r\nAuthorization: Bearer %s\r\n\r\n" % (host.encode(), port, token.encode())

    async def worker(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = index
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                writer.write(b"GET " + paths[i % len(paths)] + b" HTTP/1.1\r\n" + head)
                i += connections
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if b" 200 " not in status_line:
                    errors[0] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "elapsed_s": elapsed,
        "latencies": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()

    emu = Emulator.from_env()
    emu.reset()
    ids = emu.waiting_jobs(args.jobs)
    split = urlsplit(emu.base_url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    paths = [f"/api/v2/batch/process/{i}".encode() for i in ids]
    token = _token(emu)
    asyncio.run(_load(host, port, paths, token, 4, 1.0))  # warm-up
    rows = []
    for connections in args.connections:
        emu_cpu0, client_cpu0 = emu.cpu_seconds(), time.process_time()
        out = asyncio.run(_load(host, port, paths, token, connections, args.duration))
        emu_cpu = emu.cpu_seconds() - emu_cpu0
        client_cpu = time.process_time() - client_cpu0
        lat = out["latencies"]
        rows.append(
            {
                "connections": connections,
                "requests": out["requests"],
                "errors": out["errors"],
                "per_s": out["requests"] / out["elapsed_s"],
                "p50_ms": percentile(lat, 50) * 1000,
                "p99_ms": percentile(lat, 99) * 1000,
                "emulator_cpu_pct": emu_cpu / out["elapsed_s"] * 100,
                "emulator_cpu_per_request_us": emu_cpu / max(1, out["requests"]) * 1e6,
                "client_cpu_pct": client_cpu / out["elapsed_s"] * 100,
            }
        )
    emit({"jobs": args.jobs, "duration_s": args.duration, "rows": rows})


if __name__ == "__main__":
    main()
