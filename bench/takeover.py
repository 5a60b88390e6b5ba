"""Lock takeover: seconds from SIGKILL of the leader process to a standby holding the lock.

Run from the worktree: ``PYTHONPATH=$PWD python3 bench/takeover.py [DSN] [REPS]``.
Each repetition starts a leader in a child process (``Leadership.acquire``
on a fresh schema), waits for it to hold the lock, starts waiting for the
lock in this process, kills the child with SIGKILL and times the grant.
Only the lock: the time to the first job placed needs the dispatcher
wired to leadership (see docs/ha.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

from narwhal.dispatcher.leadership import Leadership
from tests.support.postgres import SERVER, fresh_schema

CHILD = """
import asyncio, sys
from narwhal.dispatcher.leadership import Leadership
from narwhal.storeurl import StoreUrl
async def main():
    lead = Leadership(StoreUrl("postgresql", dsn=sys.argv[1]))
    await lead.acquire()
    print("held", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def once(dsn: str) -> float:
    from narwhal.storeurl import StoreUrl

    child = subprocess.Popen(  # noqa: S603, ASYNC220 - a bench: blocking here is harmless
        [sys.executable, "-c", CHILD, dsn], stdout=subprocess.PIPE, env=os.environ.copy()
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"held"
    async with Leadership(StoreUrl("postgresql", dsn=dsn)) as standby:
        waiting = asyncio.create_task(standby.acquire())
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        await waiting
        took = time.monotonic() - killed
    child.wait()
    return took


def main() -> None:
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with fresh_schema() as url:
        dsn = url.dsn if len(sys.argv) < 2 else sys.argv[1]
        assert dsn is not None
        times = [asyncio.run(once(dsn)) for _ in range(reps)]
    print(f"server {SERVER}: {reps} takeovers (SIGKILL -> standby holds the lock)")
    print(f"  median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
