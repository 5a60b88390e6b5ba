"""Where a step's CPU and memory are read: its process group, or its container's cgroup.

Both probes are blocking (they read files) and run on a thread
(``usage.StepMeter``). Both treat what vanishes under them (a process that
exits between the listing and the read, a cgroup removed with its
container) as nothing to read, never as an error.

``GroupProbe`` (the local executor) sums over the processes of the step's
process group, from ``/proc/PID/stat``: CPU is ``utime + stime + cutime +
cstime`` (a command's time moves into its parent's ``cutime`` when the
shell waits for it, so the sum does not drop as commands end); memory is
the ``rss`` field, the same counter ``statm`` shows, read from the same
file so one read per process suffices. Memory shared between processes
(a fork's pages) counts once per process. Once the group's leader was
reaped its final figures come from ``wait4`` (``process.Child.rusage``).

``CgroupProbe`` (the Docker executor) reads the container's cgroup: cgroup
v2 ``cpu.stat`` ``usage_usec`` and ``memory.current``, or cgroup v1
``cpuacct.usage`` and ``memory.usage_in_bytes``, whichever the hierarchy
mounted here has (a hybrid host has v2 for CPU and v1 for memory). Memory
leaves out inactive file cache, as ``docker stats`` does: cache the kernel
drops before it would kill the step is not what the step uses. The cgroup
is found by the container's id under both cgroup drivers' paths
(``docker/ID``, ``system.slice/docker-ID.scope``), else through the
container's init process (``/proc/PID/cgroup``).
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from narwhal.runner.usage import Reading

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: Times a container's cgroup is looked for before its probe gives up.
_SEARCHES = 3
#: Nothing there to read: a process or a cgroup that just went.
_GONE = (FileNotFoundError, ProcessLookupError)


def stat_usage(data: bytes) -> tuple[int, float, int]:
    """``(process group, CPU seconds, resident bytes)`` of one ``/proc/PID/stat``.

    The command name may hold spaces and parentheses: fields are counted
    after its last ``)``.
    """
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 of proc(5) (state): pgrp is 5, utime..cstime 14-17, rss 24.
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return int(fields[2]), ticks / _TICK, int(fields[21]) * _PAGE


class GroupProbe:
    """The processes of one process group (see the module docstring).

    Only the first read looks at every process. A process joins the group
    only by being forked from a member (the group is a session of its own,
    and ``setpgid`` cannot cross sessions), and a new process gets a process
    id the last listing did not have, so later reads look at the members
    and the new ids only: on a machine of a hundred processes, a tenth of
    the cost. (A process id used again within one interval, after the
    kernel went round its whole range, is missed until the next step.)
    """

    def __init__(
        self,
        pgid: int,
        *,
        leader: Callable[[], resource.struct_rusage | None] = lambda: None,
        proc: Path = Path("/proc"),
    ) -> None:
        self._pgid = pgid
        self._leader = leader
        self._proc = str(proc)
        self._listed: set[str] = set()
        self._members: set[str] = set()
        # A read of a cancelled timer may still run on its thread when the
        # last one starts: the listing and the members are read and
        # replaced together.
        self._lock = threading.Lock()

    def read(self) -> Reading | None:
        with self._lock:
            return self._read()

    def _read(self) -> Reading | None:
        listed = {name for name in os.listdir(self._proc) if name.isdigit()}
        candidates = (listed - self._listed) | (self._members & listed)
        self._listed = listed
        self._members = set()
        cpu, memory = 0.0, 0
        for name in candidates:
            try:
                pgid, used, rss = stat_usage(_read(f"{self._proc}/{name}/stat"))
            except (*_GONE, ValueError, IndexError):  # gone meanwhile (or a torn read)
                continue
            if pgid == self._pgid:
                self._members.add(name)
                cpu, memory = cpu + used, memory + rss
        found = bool(self._members)
        ended = self._leader()
        if ended is None:
            return Reading(cpu=cpu, memory=memory) if found else None
        # The leader is reaped: its time and its children's, from wait4.
        cpu += ended.ru_utime + ended.ru_stime
        peak = ended.ru_maxrss * 1024  # Linux gives KiB
        return Reading(cpu=cpu, memory=memory if found else None, peak=peak)


def _read(path: str) -> bytes:
    """A small pseudo-file's bytes with one open, read and close: no buffered file object."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 16384)  # memory.stat is the longest: about 1 KiB
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Mount:
    """One cgroup hierarchy as mounted here: its root in the hierarchy and where it is."""

    root: str
    point: Path

    def dir(self, path: str) -> Path:
        inside = path[len(self.root) :] if path.startswith(self.root) else path
        return self.point / inside.lstrip("/")


def cgroup_mounts(mountinfo: str) -> dict[str, _Mount]:
    """The hierarchies of a ``/proc/self/mountinfo``: ``""`` for v2, else by v1 controller."""
    mounts: dict[str, _Mount] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, kinds = left.split(), right.split()
        if len(fields) < 5 or len(kinds) < 3:
            continue
        mount = _Mount(root=fields[3], point=Path(fields[4]))
        if kinds[0] == "cgroup2":
            mounts.setdefault("", mount)
        elif kinds[0] == "cgroup":
            for option in kinds[2].split(","):
                mounts.setdefault(option, mount)
    return mounts


def process_cgroups(text: str) -> dict[str, str]:
    """A ``/proc/PID/cgroup``: path per v1 controller, and ``""`` for the v2 one."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


@dataclass(frozen=True, slots=True)
class _Files:
    """Where one container's figures are: CPU (v2 or v1) and memory (v2 or v1)."""

    cpu: Path
    memory: Path
    memory_stat: Path

    def read(self) -> Reading:
        if self.cpu.name == "cpu.stat":
            cpu = _field(_read(str(self.cpu)), b"usage_usec") / 1e6
        else:  # cpuacct.usage: nanoseconds
            cpu = int(_read(str(self.cpu))) / 1e9
        used = int(_read(str(self.memory)))
        stat = _read(str(self.memory_stat))
        # v2 names it inactive_file; v1 total_inactive_file (with the children's).
        key = b"inactive_file" if self.memory.name == "memory.current" else b"total_inactive_file"
        return Reading(cpu=cpu, memory=max(0, used - _field(stat, key)))


def _field(text: bytes, key: bytes) -> int:
    """A ``key value`` line's value (0 if absent)."""
    prefix = key + b" "
    if text.startswith(prefix):
        start = len(prefix)
    else:
        at = text.find(b"\n" + prefix)
        if at < 0:
            return 0
        start = at + 1 + len(prefix)
    end = text.find(b"\n", start)
    return int(text[start : end if end >= 0 else len(text)])


class CgroupProbe:
    """One container's cgroup (see the module docstring).

    ``pid`` gives the container's init process (an engine call, made only
    when the cgroup is not where the drivers put it).
    """

    def __init__(
        self,
        container_id: str,
        *,
        pid: Callable[[], int | None] = lambda: None,
        proc: Path = Path("/proc"),
    ) -> None:
        self._id = container_id
        self._pid = pid
        self._proc = proc
        self._files: _Files | None = None
        self._searches = 0

    def read(self) -> Reading | None:
        if self._files is None:
            if self._searches >= _SEARCHES:
                return None  # not on this host's cgroup mounts: no engine call every second
            self._searches += 1
            self._files = self._find()
            if self._files is None:
                return None
        try:
            return self._files.read()
        except _GONE:  # removed with its container
            return None

    def _find(self) -> _Files | None:
        mounts = cgroup_mounts((self._proc / "self" / "mountinfo").read_text())
        by_driver = [f"/docker/{self._id}", f"/system.slice/docker-{self._id}.scope"]
        found = _files(mounts, lambda _: by_driver)
        if found is None:
            pid = self._pid()
            if pid is None or pid <= 0:
                return None
            try:
                paths = process_cgroups((self._proc / str(pid) / "cgroup").read_text())
            except _GONE:
                return None
            found = _files(mounts, lambda controller: [paths.get(controller, "")])
        return found


def _files(mounts: dict[str, _Mount], candidates: Callable[[str], list[str]]) -> _Files | None:
    """The figures' files: for each, v2 if it has them, else v1; None if either is missing."""
    cpu = _first(mounts, candidates, [("", "cpu.stat"), ("cpuacct", "cpuacct.usage")])
    memory = _first(
        mounts, candidates, [("", "memory.current"), ("memory", "memory.usage_in_bytes")]
    )
    if cpu is None or memory is None:
        return None
    return _Files(cpu=cpu, memory=memory, memory_stat=memory.with_name("memory.stat"))


def _first(
    mounts: dict[str, _Mount],
    candidates: Callable[[str], list[str]],
    choices: list[tuple[str, str]],
) -> Path | None:
    for controller, name in choices:
        mount = mounts.get(controller)
        if mount is None:
            continue
        for path in candidates(controller):
            if path and (candidate := mount.dir(path) / name).is_file():
                return candidate
    return None
