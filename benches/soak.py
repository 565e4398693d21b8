#!/usr/bin/env python3
"""Soak driver for benches/soak.sh: hostile connections against a running Rampart
while a legitimate client measures what it still gets.

Hostile kinds, kept open all the time (a closed one is replaced at once):
  partial_head  request line, then one header line every 2 s, never the end
  drip_body     a whole head announcing 1000 bytes, then one byte every 2 s
  idle_keepalive one complete request, then silence on the kept-alive connection
  idle_h2       the HTTP/2 preface and SETTINGS on the h2c listener, then silence

Each hostile connection comes from one of 200 loopback addresses (127.1.x.y) and
records how long the server let it live. The legitimate client sends GET /
at a fixed rate (open loop) from 127.0.0.1 over keep-alive connections and
records status and latency. RSS of the Rampart process is sampled every 5 s.
Loopback only; stops by itself after --seconds. Prints one JSON document.
"""
import argparse
import asyncio
import json
import statistics
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


class Stats:
    def __init__(self):
        self.held = {k: [] for k in ("partial_head", "drip_body", "idle_keepalive", "idle_h2")}
        self.opened = {k: 0 for k in self.held}
        self.refused_at_connect = {k: 0 for k in self.held}
        self.legit_latency = []
        self.legit_status = {}
        self.legit_errors = 0
        self.rss = []


async def hostile(kind, host, port, h2_port, source, stats, end, delay):
    # Spread the first connections over the first deadline, as a real flood
    # arrives, so that their deadlines do not all fall on the same instant.
    await asyncio.sleep(delay)
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection(
                host, h2_port if kind == "idle_h2" else port, local_addr=(source, 0)
            )
        except OSError:
            stats.refused_at_connect[kind] += 1
            await asyncio.sleep(0.5)
            continue
        stats.opened[kind] += 1
        started = time.monotonic()

        async def feed():
            try:
                if kind == "partial_head":
                    w.write(b"GET / HTTP/1.1\r\nHost: soak\r\n")
                    i = 0
                    while True:
                        await asyncio.sleep(2)
                        w.write(f"X-Drip-{i}: 1\r\n".encode())
                        await w.drain()
                        i += 1
                elif kind == "drip_body":
                    w.write(b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000\r\n\r\n")
                    while True:
                        await asyncio.sleep(2)
                        w.write(b"x")
                        await w.drain()
                elif kind == "idle_keepalive":
                    w.write(b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n")
                    await w.drain()
                else:
                    w.write(H2_PREFACE + H2_SETTINGS)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass

        feeder = asyncio.create_task(feed())
        try:
            while time.monotonic() < end:
                left = end - time.monotonic()
                data = await asyncio.wait_for(r.read(65536), timeout=max(0.01, left))
                if not data:
                    break
        except (asyncio.TimeoutError, OSError):
            pass
        closed_by_server = time.monotonic() < end
        feeder.cancel()
        w.close()
        if closed_by_server:
            stats.held[kind].append(time.monotonic() - started)


async def legit_conn(host, port, queue, stats, end):
    r = w = None
    while time.monotonic() < end:
        try:
            scheduled = await asyncio.wait_for(queue.get(), timeout=1)
        except asyncio.TimeoutError:
            continue
        for attempt in range(2):
            try:
                if w is None:
                    r, w = await asyncio.open_connection(host, port, local_addr=("127.0.0.1", 0))
                w.write(b"GET / HTTP/1.1\r\nHost: legit\r\n\r\n")
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout=10)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await asyncio.wait_for(r.readexactly(length), timeout=10)
                stats.legit_latency.append(time.monotonic() - scheduled)
                stats.legit_status[status] = stats.legit_status.get(status, 0) + 1
                break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                # A kept-alive connection the server closed: one retry on a new one.
                if w is not None:
                    w.close()
                r = w = None
                if attempt == 1:
                    stats.legit_errors += 1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18180)
    ap.add_argument("--h2-port", type=int, default=18181)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--hostile", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--legit-conns", type=int, default=16)
    a = ap.parse_args()
    stats = Stats()
    start = time.monotonic()
    end = start + a.seconds
    kinds = list(stats.held)
    tasks = []
    for i in range(a.hostile):
        source = f"127.1.0.{(i % 200) + 1}"
        delay = 10.0 * i / max(1, a.hostile)
        tasks.append(asyncio.create_task(
            hostile(kinds[i % len(kinds)], a.host, a.port, a.h2_port, source, stats, end, delay)))
    queue = asyncio.Queue()
    for _ in range(a.legit_conns):
        tasks.append(asyncio.create_task(legit_conn(a.host, a.port, queue, stats, end)))

    async def schedule():
        n = 0
        while True:
            due = start + n / a.rate
            now = time.monotonic()
            if due >= end:
                return
            if due > now:
                await asyncio.sleep(due - now)
            queue.put_nowait(due)
            n += 1

    async def sample():
        while time.monotonic() < end:
            stats.rss.append((round(time.monotonic() - start, 1), rss_kib(a.pid)))
            await asyncio.sleep(5)

    tasks.append(asyncio.create_task(schedule()))
    tasks.append(asyncio.create_task(sample()))
    await asyncio.sleep(a.seconds + 2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    sent = sum(stats.legit_status.values()) + stats.legit_errors
    ok = stats.legit_status.get(200, 0)
    rss_1min = next((kib for t, kib in stats.rss if t >= 60 and kib), None)
    rss_after = [kib for t, kib in stats.rss if t >= 60 and kib]
    out = {
        "seconds": a.seconds,
        "hostile_connections": a.hostile,
        "hostile": {
            k: {
                "opened": stats.opened[k],
                "closed_by_server": len(v),
                "refused_at_connect": stats.refused_at_connect[k],
                "held_p50_s": round(statistics.median(v), 2) if v else None,
                "held_p99_s": round(pct(v, 99), 2) if v else None,
                "held_max_s": round(max(v), 2) if v else None,
            }
            for k, v in stats.held.items()
        },
        "legit": {
            "target_rate": a.rate,
            "sent": sent,
            "ok_200": ok,
            "statuses": stats.legit_status,
            "errors": stats.legit_errors,
            "success_pct": round(100 * ok / sent, 3) if sent else None,
            "p50_ms": round(1000 * pct(stats.legit_latency, 50), 2) if stats.legit_latency else None,
            "p99_ms": round(1000 * pct(stats.legit_latency, 99), 2) if stats.legit_latency else None,
        },
        "rss_kib": {
            "at_1min": rss_1min,
            "max_after_1min": max(rss_after) if rss_after else None,
            "ratio_max_to_1min": round(max(rss_after) / rss_1min, 3) if rss_after and rss_1min else None,
            "samples": stats.rss,
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
