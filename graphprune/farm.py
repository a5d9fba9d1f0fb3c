"""Device farms: spread measurements across devices, one measurement at a time per device.

A timing run must have its device to itself (two runs at once on one board disturb each other), but
different devices work in parallel.  :func:`spread` gives each device one thread that takes the next
job it may run (a job can be pinned to one device, e.g. the dense baseline every device needs), so the
farm finishes as soon as its slowest device does.  Results come back in job order, each with the
device that produced it; the first failure stops the farm (jobs under way finish) and is raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from graphprune.errors import InternalError, UsageError
from graphprune.targets.base import TargetOptions
from graphprune.targets.executor import Executor, LocalExecutor

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class Device:
    """One machine of the farm: where jobs run and the name rows carry."""

    name: str
    executor: Executor

    def options(self, options: TargetOptions) -> TargetOptions:
        """``options`` with this device's executor."""
        return replace(options, executor=self.executor)


def devices_from(executors: Sequence[Executor | None]) -> list[Device]:
    """Name each executor by its location (``local`` for None); repeated locations get ``#2``, ``#3``."""
    out: list[Device] = []
    seen: dict[str, int] = {}
    for ex in executors or [None]:
        ex = ex if ex is not None else LocalExecutor()
        n = seen.get(ex.location, 0) + 1
        seen[ex.location] = n
        out.append(Device(ex.location if n == 1 else f"{ex.location}#{n}", ex))
    return out


def parse_devices(urls: Sequence[str], make_ssh: Callable[[str], Executor]) -> list[Device]:
    """``--device`` values: ``local`` for this machine, ``ssh://…`` through ``make_ssh``; none: local."""
    executors: list[Executor | None] = []
    for url in urls:
        if url == "local":
            executors.append(None)
        elif url.startswith("ssh://"):
            executors.append(make_ssh(url))
        else:
            raise UsageError(f"--device {url!r}: expected 'local' or ssh://[user@]host[:port]")
    names = [d.name for d in devices_from(executors)]
    dup = sorted({n.split("#")[0] for n in names if "#" in n})
    if dup:
        raise UsageError(f"--device {dup[0]} is given twice; a device measures one model at a time, so list "
                         "each device once")
    return devices_from(executors)


class Steps(Protocol):
    """Progress reporting: ``add`` expected work, ``advance`` as it is done (a rich bar, or nothing)."""

    def add(self, total: int) -> None: ...

    def advance(self, n: int, label: str) -> None: ...


class NoSteps:
    def add(self, total: int) -> None:
        pass

    def advance(self, n: int, label: str) -> None:
        pass


@dataclass
class Done(Generic[J, R]):
    job: J
    device: Device
    result: R


def spread(
    jobs: Sequence[J],
    devices: Sequence[Device],
    work: Callable[[Device, J], R],
    *,
    allowed: Callable[[J], Collection[str] | None] | None = None,
    on_done: Callable[[Done[J, R]], None] | None = None,
) -> list[Done[J, R]]:
    """Run ``work(device, job)`` for every job, each device on one job at a time, devices in parallel.

    ``allowed(job)`` names the devices that may run a job (None: any).  ``on_done`` is called under a
    lock as each job finishes (save progress, advance a progress bar).
    """
    if not devices:
        raise InternalError("spread() needs at least one device")
    names = {d.name for d in devices}
    pins = [allowed(j) if allowed else None for j in jobs]
    for p in pins:
        if p is not None and not set(p) & names:
            raise InternalError(f"a job may run only on {sorted(p)}, none of which is in the farm")
    lock = threading.Lock()
    todo = list(range(len(jobs)))
    results: list[Done[J, R] | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def take(dev: Device) -> int | None:
        with lock:
            if errors:
                return None
            for k, i in enumerate(todo):
                pin = pins[i]
                if pin is None or dev.name in pin:
                    return todo.pop(k)
            return None

    def loop(dev: Device) -> None:
        while (i := take(dev)) is not None:
            try:
                done = Done(jobs[i], dev, work(dev, jobs[i]))
            except BaseException as e:  # handed to the caller's thread below
                with lock:
                    errors.append(e)
                return
            with lock:
                results[i] = done
                if on_done is not None:
                    try:
                        on_done(done)
                    except BaseException as e:
                        errors.append(e)

    if len(devices) == 1:
        loop(devices[0])
    else:
        threads = [threading.Thread(target=loop, args=(d,), name=f"graphprune-{d.name}", daemon=True)
                   for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise InternalError(f"{len(missing)} jobs were not run (pinned to a device that stopped?)")
    return [r for r in results if r is not None]
