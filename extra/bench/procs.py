"""Worker subprocesses for the side-by-side benchmark: started, watched, stopped.

Every process gets its own session so that it and its children (Huey's
worker processes, for one) are stopped together by process group, and its
output goes to a log file whose tail is shown when it dies early.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from extra.bench import common


def rss_tree_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0.0
    for current in common.process_tree(pid):
        try:
            total += common.rss_mib(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class Processes:
    """A group of subprocesses that a ``with`` block stops on the way out."""

    def __init__(self, label: str):
        self.label = label
        self.logdir = Path(tempfile.mkdtemp(prefix=f"sisy-bench-{label}-"))
        self.running: list[tuple[subprocess.Popen, Path]] = []

    def start(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = self.logdir / f"{len(self.running)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, env=env or common.env(), cwd=common.ROOT,
                                       stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.running.append((process, log))
        return process

    def check(self) -> None:
        """Raise with the log's tail if any process has exited."""
        for process, log in self.running:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.label}: {process.args} exited with {process.returncode}"
                                   f":\n{tail}")

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.running]

    def rss_mib(self) -> float:
        return sum(rss_tree_mib(process.pid) for process, _ in self.running)

    def pause(self) -> None:
        """Freeze every process (SIGSTOP to its group): a worker that takes nothing."""
        for process, _ in self.running:
            _signal_group(process, signal.SIGSTOP)

    def resume(self) -> None:
        for process, _ in self.running:
            _signal_group(process, signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        self.resume()  # a paused process would not act on SIGTERM
        for process, _ in self.running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process, _ in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        time.sleep(0.2)
        for process, _ in self.running:  # children left behind by a parent that exited
            _signal_group(process, signal.SIGKILL)
        self.running.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
