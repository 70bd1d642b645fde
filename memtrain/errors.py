"""Errors users can cause, and the exit codes the CLI maps them to.

A MemtrainError is bad input: the CLI prints its one line and exits 2 (the
service answers 4xx with the same line). Anything else that escapes is a bug
and keeps its traceback. MemtrainError stays a ValueError so that code written
against the older `except ValueError` keeps working.
"""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # the job ran and failed (e.g. a verification over tolerance)
    USAGE = 2  # bad input: the one-line error names the field
    RETRY = 3  # the job failed where a new attempt may succeed (its last checkpoint is kept): a service retries it


class MemtrainError(ValueError):
    """Bad input from a user: printed as one line by the CLI, exit status 2."""


class ConfigError(MemtrainError):
    """A job file, flag or argument with a wrong key, type or value; the message names it."""


class DeviceError(MemtrainError):
    """The asked-for device does not exist or cannot be used."""


class DataError(MemtrainError):
    """A data set that cannot be read or does not fit the model.

    `public`: the same line without anything read from the file (a cell, a column name, a
    label, magic bytes): what the service tells an API client, who may not read the file
    itself. Messages that quote no contents leave it unset (then it is the message)."""

    def __init__(self, message: str, *, public: str | None = None):
        super().__init__(message)
        self.public = message if public is None else public


class CheckpointError(MemtrainError):
    """A checkpoint directory that cannot be used, or a checkpoint that does not load."""


class ModelFileError(MemtrainError):
    """A saved model that is missing, corrupt, or written by an older memtrain."""


class DiskFull(MemtrainError):
    """No room left where memtrain must write (the service's store, its state dir): the service
    answers 507 and keeps serving reads; nothing already written is lost."""

    exit_code = ExitCode.FAILURE


class JobFailed(RuntimeError):
    """The job ran and could not go on (e.g. too many non-finite steps in a row): exit status 1."""

    exit_code = ExitCode.FAILURE


class FinishFailed(JobFailed):
    """Training is done but the final evaluation or model write failed (out of memory): the last
    checkpoint holds the trained state, so another attempt resumes it and only finishes."""

    exit_code = ExitCode.RETRY
