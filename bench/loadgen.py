"""A small open-loop HTTP/1.1 load generator on keep-alive sockets (run as its own process).

Latency is measured from each request's scheduled send time, so a stalled
server cannot hide queueing delay (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time

import uvloop


async def _one_connection(host, port, requests, slots, results, stop_at):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            scheduled = await slots.get()
            if scheduled is None or time.perf_counter() > stop_at:
                return
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(random.choice(requests))
            await writer.drain()
            status = await _read_response(reader)
            results.append((time.perf_counter() - scheduled, status, scheduled, sent - scheduled))
    finally:
        writer.close()


async def _read_response(reader) -> int:
    # Two reads per response, not one per header line: the generator shares the
    # server's two cores, so its own CPU per request matters.
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    at = head.lower().find(b"\r\ncontent-length:")
    if at >= 0:
        end = head.index(b"\r\n", at + 2)
        length = int(head[at + 17 : end])
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _warm_connection(host, port, queue):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not queue.empty():
            writer.write(queue.get_nowait())
            await writer.drain()
            await _read_response(reader)
    finally:
        writer.close()


async def run(
    host, port, path, token, bodies, rate, seconds, connections, warmup=False, dump=None, window=None
):
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    if warmup:
        # Every distinct request once, unmeasured, so caches are warm as in steady state.
        warm: asyncio.Queue = asyncio.Queue()
        for req in requests:
            warm.put_nowait(req)
        await asyncio.gather(*[_warm_connection(host, port, warm) for _ in range(8)])
    # Its own GC passes would count as the server's latency: what the imports and the warm-up
    # left is frozen out of them, and no pass runs while it measures. Each result is a tracked
    # tuple, so a full pass grows with the run: logged in a 300 s run at 1,500/s, 2.3, 4.7, 6.1,
    # 7.0, 10.0 and 10.3 ms (2026-11-30), and more in longer runs. What it allocates is freed by
    # reference counting; a cycle left by a run waits for the pass after it.
    gc.collect()
    gc.freeze()
    gc.disable()
    slots: asyncio.Queue = asyncio.Queue()
    results: list[tuple[float, int]] = []
    start = time.perf_counter() + 0.2
    total = int(rate * seconds)
    for i in range(total):
        slots.put_nowait(start + i / rate)
    for _ in range(connections):
        slots.put_nowait(None)
    stop_at = start + seconds + 5
    await asyncio.gather(
        *[_one_connection(host, port, requests, slots, results, stop_at) for _ in range(connections)]
    )
    elapsed = max(time.perf_counter() - start, 1e-9)
    gc.enable()
    if dump is not None:
        # Per request: when it was due (seconds from the first), its latency, and how late
        # this process sent it, for lining slow requests up against what the server's
        # processes were doing; `start` is time.perf_counter(), the system-wide monotonic
        # clock on Linux.
        with open(dump, "w") as f:
            requests = sorted((round(r[2] - start, 6), round(r[0], 6), round(r[3], 6)) for r in results)
            json.dump({"start": start, "requests": requests}, f)
    lat = sorted(r[0] for r in results)
    ok = sum(1 for r in results if r[1] == 200)

    out = {
        "target_rps": rate,
        "achieved_rps": round(len(results) / elapsed, 1),
        "requests": len(results),
        "ok": ok,
        "p50_ms": _quantile_ms(lat, 0.50),
        "p90_ms": _quantile_ms(lat, 0.90),
        "p99_ms": _quantile_ms(lat, 0.99),
        "max_ms": _quantile_ms(lat, 1.0),
        # On the system-wide monotonic clock (time.perf_counter() on Linux): the harness
        # counts what it watched meanwhile (bench/vcpu_stalls.py) over this span only.
        "measured_span": [start, start + elapsed],
    }
    if window:
        # A long run's p99 hides how its stretches differ: each window's own p99, by due time.
        windows: list[list[float]] = [[] for _ in range(max(1, round(seconds / window)))]
        for latency, _, scheduled, _ in results:
            windows[min(len(windows) - 1, int((scheduled - start) / window))].append(latency)
        out["window_seconds"] = window
        # The system-wide monotonic clock (time.perf_counter() on Linux): what the harness
        # sampled meanwhile lines up with each window.
        out["window_start"] = start
        out["window_requests"] = [len(w) for w in windows]
        out["window_p99_ms"] = [_quantile_ms(sorted(w), 0.99) for w in windows]
    return out


def _quantile_ms(ordered, p):
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3) if ordered else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--bodies", required=True, help="JSON file with a list of request bodies")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--warmup", action="store_true", help="send every body once before measuring")
    ap.add_argument("--dump", help="write each request's due time and latency to this JSON file")
    ap.add_argument("--window", type=float, help="also report the p99 of each window of this many seconds")
    a = ap.parse_args()
    with open(a.bodies) as f:
        bodies = [json.dumps(b).encode() for b in json.load(f)]
    # uvloop (uvicorn's own event loop, installed with it): the generator shares the server's
    # two cores, and on asyncio's default loop it took 0.29 of a core at 1,500 requests/s
    # against 0.22 on uvloop, CPU that a real platform's clients would not take from the server.
    out = uvloop.run(
        run(
            "127.0.0.1",
            a.port,
            "/v1/consent/checks",
            a.token,
            bodies,
            a.rate,
            a.seconds,
            a.connections,
            warmup=a.warmup,
            dump=a.dump,
            window=a.window,
        )
    )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
