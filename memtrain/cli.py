"""The `memtrain` command: parses and prints; the work lives in the library."""

from __future__ import annotations

import sys

import click

from memtrain import __version__
from memtrain.errors import ExitCode, MemtrainError


class _Group(click.Group):
    """Turns a user error raised anywhere below into one line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (MemtrainError, ValueError) as exc:
            click.echo(f"memtrain: error: {exc}", err=True)
            sys.exit(ExitCode.USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memtrain")
def main():
    """Train feedforward networks on a GPU (CuPy) or CPU (NumPy), knowing
    exactly how much memory the training takes before anything is allocated."""


if __name__ == "__main__":  # pragma: no cover
    main()
