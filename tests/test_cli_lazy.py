"""The lazy command group: a subcommand whose module cannot be imported says why, instead of a traceback."""

from __future__ import annotations

from click.testing import CliRunner

from server import cli


def test_an_unimportable_subcommand_names_the_reason(monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", "server.no_such_module:cmd")
    result = CliRunner().invoke(cli.main, ["ghost"])
    assert result.exit_code == 1
    assert "'ghost' is unavailable" in result.output
    assert "No module named 'server.no_such_module'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
