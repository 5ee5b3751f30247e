"""CPU time spent on the machine during a batch, from ``/proc`` (Linux).

:class:`CpuMeter` reads the machine's busy time (``/proc/stat``: every
process, including those that exit during the batch, interrupts and the
kernel) and that of the PostgreSQL and Redis server processes
(``/proc/PID/stat`` of each process named ``postgres`` or ``redis-server``,
with the children it has reaped: a PostgreSQL backend that exits during the
batch counts in the postmaster) before and after a batch. Whatever else runs
on the machine during the batch is counted too; on an otherwise quiet machine
that is a few µs per run.
"""

from __future__ import annotations

import os

SERVERS = {"postgres": "db", "redis-server": "redis"}
_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy since boot (all cores)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _TICK


def server_seconds() -> dict[str, float]:
    """Seconds of CPU (user + system) of the database and Redis servers' processes,
    with their reaped children's (a backend whose client left)."""
    seconds = dict.fromkeys(SERVERS.values(), 0.0)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:  # gone since the listing
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        role = SERVERS.get(name)
        if role is not None:
            fields = text[text.rindex(")") + 2:].split()
            seconds[role] += sum(int(value) for value in fields[11:15]) / _TICK
    return seconds


class CpuMeter:
    """``start()`` before a batch, ``per_run(count)`` after it: µs of CPU per run."""

    def start(self) -> None:
        self._busy, self._servers = machine_busy(), server_seconds()

    def per_run(self, count: int) -> dict[str, float]:
        busy, servers = machine_busy(), server_seconds()
        result = {"cpu": (busy - self._busy) / count * 1e6}
        for role, seconds in servers.items():
            result[f"cpu_{role}"] = (seconds - self._servers[role]) / count * 1e6
        return result
