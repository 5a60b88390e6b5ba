"""JobStream: numbering, bounded window, cumulative ACKs, resend."""

from __future__ import annotations

import asyncio

from narwhal.mesh import protocol as p
from narwhal.runner.stream import JobStream


def _log(data: bytes) -> object:
    return lambda seq: p.Log(job_id=1, attempt=1, seq=seq, data=data)


def test_frames_are_numbered_kept_and_forgotten_on_ack() -> None:
    sent: list[bytes] = []

    async def main() -> None:
        stream = JobStream(1, 1, send=lambda f: sent.append(f) is None)
        for chunk in (b"a", b"b", b"c"):
            await stream.put(_log(chunk))  # type: ignore[arg-type]
        assert [p.decode(f).seq for f in sent] == [0, 1, 2]  # type: ignore[attr-defined]
        assert stream.pending == 3 and stream.next_unacked == 0
        stream.ack(1)
        assert stream.pending == 1 and stream.next_unacked == 2
        sent.clear()
        assert stream.resend() == 1
        assert [p.decode(f).seq for f in sent] == [2]  # type: ignore[attr-defined]

    asyncio.run(main())


def test_window_blocks_until_acked() -> None:
    async def main() -> None:
        stream = JobStream(1, 1, send=lambda f: False, max_frames=2)
        await stream.put(_log(b"1"))  # type: ignore[arg-type]
        await stream.put(_log(b"2"))  # type: ignore[arg-type]
        third = asyncio.create_task(stream.put(_log(b"3")))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert not third.done(), "a full window makes the producer wait"
        stream.ack(0)
        await asyncio.wait_for(third, 1)
        assert stream.pending == 2

    asyncio.run(main())


def test_byte_window_bounds_memory() -> None:
    async def main() -> None:
        stream = JobStream(1, 1, send=lambda f: True, max_frames=1000, max_bytes=100_000)
        chunk = b"x" * 60_000
        await stream.put(_log(chunk))  # type: ignore[arg-type]
        await stream.put(_log(chunk))  # type: ignore[arg-type]
        blocked = asyncio.create_task(stream.put(_log(chunk)))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert not blocked.done()
        stream.ack(1)
        await asyncio.wait_for(blocked, 1)

    asyncio.run(main())


def test_closed_after_done_is_acked() -> None:
    async def main() -> None:
        stream = JobStream(1, 1, send=lambda f: True)
        await stream.put(_log(b"x"))  # type: ignore[arg-type]
        await stream.put(
            lambda seq: p.Done(
                job_id=1, attempt=1, seq=seq, status="success", reason="", duration=0.1
            )
        )
        stream.ack(0)
        assert not stream.closed.is_set()
        stream.ack(1)
        assert stream.closed.is_set()

    asyncio.run(main())
