#!/usr/bin/env python3
"""S7, credential stuffing, for benches/stuffing.sh: ACCOUNTS accounts, each tried
once from each of ADDRESSES distinct client addresses (X-Forwarded-For through a
trusted loopback proxy), interleaved so every account sees its attempts spread
over the run. Counts what Rampart let through to the origin per account and
reads Rampart's CPU time, so the cost per login request can be compared with a
run without the per-account rule. Loopback only; bounded. Prints JSON.
"""
import argparse, asyncio, json, os, time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


async def worker(host, port, queue, counts):
    r, w = await asyncio.open_connection(host, port)
    while True:
        item = await queue.get()
        if item is None:
            break
        account, address = item
        body = json.dumps({"username": account, "password": "123456"}).encode()
        for attempt in range(2):
            try:
                w.write(b"POST /api/auth/login HTTP/1.1\r\nHost: s7\r\nContent-Type: application/json\r\n"
                        + f"X-Forwarded-For: {address}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                close = False
                for line in head.split(b"\r\n"):
                    low = line.lower()
                    if low.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    if low.startswith(b"connection:") and b"close" in low:
                        close = True
                if length:
                    await r.readexactly(length)
                counts.setdefault(account, {}).setdefault(status, 0)
                counts[account][status] += 1
                if close:
                    w.close()
                    r, w = await asyncio.open_connection(host, port)
                break
            except (OSError, asyncio.IncompleteReadError, ValueError):
                w.close()
                r, w = await asyncio.open_connection(host, port)
    w.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18280)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--addresses", type=int, default=2000)
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    a = ap.parse_args()
    queue = asyncio.Queue(maxsize=10000)
    counts = {}
    cpu0, t0 = cpu_seconds(a.pid), time.monotonic()
    workers = [asyncio.create_task(worker("127.0.0.1", a.port, queue, counts)) for _ in range(a.connections)]
    for i in range(a.addresses):
        address = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        for k in range(a.accounts):
            await queue.put((f"victim{k}@example.com", address))
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    cpu1, t1 = cpu_seconds(a.pid), time.monotonic()
    attempts = a.accounts * a.addresses
    passed = sum(c.get(200, 0) for c in counts.values())
    beyond = sum(max(0, c.get(200, 0) - a.budget) for c in counts.values())
    print(json.dumps({
        "accounts": a.accounts, "addresses": a.addresses, "attempts": attempts,
        "reached_origin": passed, "account_budget_total": a.accounts * a.budget,
        "beyond_budget": beyond, "beyond_budget_share": beyond / attempts,
        "statuses": {str(s): sum(c.get(s, 0) for c in counts.values()) for s in sorted({s for c in counts.values() for s in c})},
        "seconds": round(t1 - t0, 2), "requests_per_s": round(attempts / (t1 - t0)),
        "rampart_cpu_us_per_request": round(1e6 * (cpu1 - cpu0) / attempts, 2),
    }, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
