"""InProcessExecutor: each launch is a call in this process, run to its end at its first poll.

`compare` runs its optimizers here, one after another, so their times are comparable and
no process start is counted; a sweep with one worker (or a runner given from code) runs
its trials here too, as it always has. The scheduler that hands it jobs gives its device
one job slot: a call blocks the scheduler until it returns, and tracemalloc, which measures
a CPU job's peak, is one per process.

The call runs at the launch's first poll, not in `start`: the scheduler records the job as
started and its caller collects the job before it finished before the next call runs (a
sweep appends each trial's result before the next trial starts).

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
        self._waiting: dict = {}  # ref -> Launch, started but not yet called
        self._ended: dict = {}  # ref -> (Exit, value, exception)

    def start(self, launch: Launch) -> Handle:
        ref = str(len(self._waiting) + len(self._ended))
        self._waiting[ref] = launch
        return Handle(launch.job_id, self.name, ref, None)

    def poll(self, handle: Handle) -> Exit | None:
        launch = self._waiting.pop(handle.ref, None)
        if launch is not None:
            try:
                value, error, ended = self.call(launch), None, Exit(0)
            except Exception as exc:  # kept for outcome(): raised there with its traceback
                value, error, ended = None, exc, Exit(1, None, f"{type(exc).__name__}: {exc}")
            except BaseException:  # Ctrl-C: the job ends stopped, and the interrupt goes on up
                self._ended[handle.ref] = (Exit(None, None, "interrupted"), None, None)
                raise
            self._ended[handle.ref] = (ended, value, error)
        return self._ended[handle.ref][0]

    def outcome(self, handle: Handle):
        """What the call returned; what it raised is raised again."""
        _, value, error = self._ended[handle.ref]
        if error is not None:
            raise error
        return value

    def cancel(self, handle: Handle) -> None:
        """A call not yet made is not made (it ends cancelled); one that ran has ended."""
        if self._waiting.pop(handle.ref, None) is not None:
            self._ended[handle.ref] = (Exit(None, None, "cancelled before it ran"), None, None)

    def adopt(self, handle: Handle) -> bool:
        return False  # nothing outlives this process

    def close(self) -> None:
        pass
