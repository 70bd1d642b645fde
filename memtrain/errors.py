"""Errors users can cause, and the exit codes the CLI maps them to."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # the job ran and failed (e.g. a verification over tolerance)
    USAGE = 2  # bad input: the one-line error names the field


class MemtrainError(ValueError):
    """Bad input from a user: printed as one line by the CLI, exit status 2."""


class DeviceError(MemtrainError):
    """The asked-for device does not exist or cannot be used."""
