from click.testing import CliRunner

from memtrain import __version__
from memtrain.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"memtrain, version {__version__}"


def test_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "Train feedforward networks" in result.output
