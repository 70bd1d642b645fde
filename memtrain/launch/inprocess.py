"""InProcessExecutor: each launch is a call in this process, run to its end when it starts.

`compare` runs its optimizers here, one after another, so their times are comparable and
no process start is counted; a sweep with one worker (or a runner given from code) runs
its trials here too, as it always has. The scheduler that hands it jobs gives its device
one job slot: a call blocks the scheduler until it returns, and tracemalloc, which measures
a CPU job's peak, is one per process.

The call's return value is kept for `outcome`; an exception it raised is kept too and
raised again there, so a bug in a trial keeps its traceback (the scheduler only sees a
failed exit).
"""

from __future__ import annotations

from memtrain.launch.executor import Exit, Handle, Launch


class InProcessExecutor:
    name = "in-process"

    def __init__(self, call):
        self.call = call  # Launch -> any value (the outcome)
        self._ended: dict = {}  # ref -> (Exit, value, exception)

    def start(self, launch: Launch) -> Handle:
        ref = str(len(self._ended))
        try:
            value, error, ended = self.call(launch), None, Exit(0)
        except Exception as exc:  # kept for outcome(): raised there with its traceback
            value, error, ended = None, exc, Exit(1, None, f"{type(exc).__name__}: {exc}")
        self._ended[ref] = (ended, value, error)
        return Handle(launch.job_id, self.name, ref, None)

    def poll(self, handle: Handle) -> Exit | None:
        return self._ended[handle.ref][0]

    def outcome(self, handle: Handle):
        """What the call returned; what it raised is raised again."""
        _, value, error = self._ended[handle.ref]
        if error is not None:
            raise error
        return value

    def cancel(self, handle: Handle) -> None:
        """Nothing to stop: a call has ended by the time it has a handle."""

    def adopt(self, handle: Handle) -> bool:
        return False  # nothing outlives this process

    def close(self) -> None:
        pass
