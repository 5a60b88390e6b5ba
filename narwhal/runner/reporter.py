"""A job's step boundaries, output and steps' usage, put on its job stream as frames.

Every byte of output goes through the job's ``Masker`` first, so a secret
never leaves the runner, also when it is split between two reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from narwhal.mesh import protocol as p
from narwhal.pipeline import Demands, Step
from narwhal.runner.checkout import Checkout
from narwhal.runner.masking import Masker
from narwhal.runner.stream import JobStream
from narwhal.runner.usage import Sample


class FrameReporter:
    """Puts a job's step boundaries and output on its job stream."""

    def __init__(self, stream: JobStream, secrets: Iterable[str] = ()) -> None:
        self._stream = stream
        self._job = stream.job_id
        self._attempt = stream.attempt
        # One masker per job: it keeps state across chunks, so a secret split
        # between two reads is still caught before the line leaves the runner.
        self._masker = Masker(secrets)

    async def checked_out(
        self,
        checkout: Checkout,
        pipeline: str,
        variants: tuple[dict[str, str], ...],
        *,
        demands: Demands | None = None,
    ) -> None:
        """The commit checked out, what that cost, and (``demands``, when its
        narwhal.yml was read) what the pipeline asks of a runner."""
        needs = None
        if demands is not None:
            needs = p.Needs(priority=demands.priority, cpus=demands.cpus, memory=demands.memory)
        await self._stream.put(
            lambda seq: p.CheckedOut(
                job_id=self._job,
                attempt=self._attempt,
                seq=seq,
                sha=checkout.sha,
                pipeline=pipeline,
                variants=variants,
                checkout=checkout.seconds,
                cold=checkout.cold,
                fetched=checkout.fetched,
                needs=needs,
            )
        )

    async def step_started(self, index: int, step: Step) -> None:
        await self._stream.put(
            lambda seq: p.StepStarted(
                job_id=self._job, attempt=self._attempt, seq=seq, index=index, name=step.name
            )
        )

    async def output(self, data: bytes) -> None:
        await self._send_log(self._masker.feed(data))

    async def flush(self) -> None:
        """Send what the masker held back; once, before DONE."""
        await self._send_log(self._masker.flush())

    async def _send_log(self, data: bytes) -> None:
        for start in range(0, len(data), p.MAX_LOG_CHUNK):
            await self._stream.put(self._log(data[start : start + p.MAX_LOG_CHUNK]))

    def _log(self, chunk: bytes) -> Callable[[int], p.Message]:
        return lambda seq: p.Log(job_id=self._job, attempt=self._attempt, seq=seq, data=chunk)

    async def usage(
        self, index: int, samples: tuple[Sample, ...], memory_limit: int | None
    ) -> None:
        """A running step's new samples (``usage.Sampling.send``), in frames of at most
        ``MAX_USAGE_SAMPLES``."""
        for start in range(0, len(samples), p.MAX_USAGE_SAMPLES):
            await self._stream.put(
                self._usage(index, samples[start : start + p.MAX_USAGE_SAMPLES], memory_limit)
            )

    def _usage(
        self, index: int, samples: tuple[Sample, ...], memory_limit: int | None
    ) -> Callable[[int], p.Message]:
        return lambda seq: p.Usage(
            job_id=self._job,
            attempt=self._attempt,
            seq=seq,
            index=index,
            samples=samples,
            memory_limit=memory_limit,
        )

    async def step_finished(self, outcome: p.StepOutcome) -> None:
        await self._stream.put(
            lambda seq: p.StepFinished(
                job_id=self._job,
                attempt=self._attempt,
                seq=seq,
                index=outcome.index,
                name=outcome.name,
                status=outcome.status,
                exit_code=outcome.exit_code,
                duration=outcome.duration,
            )
        )
