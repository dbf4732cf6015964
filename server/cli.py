"""The `edgefleet` command. Subcommands are loaded lazily so `--help` is fast and a
command's heavy imports (vLLM, torch, matplotlib) happen only when it runs."""

from __future__ import annotations

import importlib

import click

from server import __version__

# name -> "module:attribute" of a click.Command
SUBCOMMANDS: dict[str, str] = {
    "serve": "server.node_cli:serve",
    "capacity": "server.node_cli:capacity",
    "plan": "server.node_cli:plan",
    "route": "server.router.cli:route",
    "fleet": "server.router.cli:fleet",
    "mcp": "server.router.cli:mcp",
    "bench": "benchmarks.cli:bench",
    "install-service": "server.deploy:install_service",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a subcommand not built yet, or a broken install
            reason = str(exc)  # `exc` is unbound once the except block ends; the closure keeps the text

            @click.command(name=name, help=f"(unavailable: {reason})")
            def unavailable() -> None:
                raise click.ClickException(f"'{name}' is unavailable: {reason}")
            return unavailable


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgefleet")
def main() -> None:
    """edgefleet: self-hosted edge inference nodes, a fleet router and a latency benchmark suite."""


if __name__ == "__main__":
    main()
