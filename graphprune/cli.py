"""``graphprune`` command line: a thin layer over the Python API.

User errors (:class:`~graphprune.errors.GraphpruneError`) print one ``Error: ...`` line and exit 1
(usage errors exit 2); a traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from graphprune import __version__
from graphprune.errors import GraphpruneError, UsageError

_DEBUG = {"on": False}


class GraphpruneGroup(click.Group):
    """Click group that turns library errors into one-line messages."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except GraphpruneError as e:
            if _DEBUG["on"]:
                traceback.print_exc()
            click.echo(f"Error: {_one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)
        except Exception as e:  # a bug: still one line unless --debug
            if _DEBUG["on"]:
                traceback.print_exc()
            click.echo(
                f"Error: internal error ({type(e).__name__}: {_one_line(str(e))}); "
                "rerun with --debug and report it",
                err=True,
            )
            ctx.exit(1)
        return None


def _one_line(msg: str) -> str:
    return " ".join(msg.split()) or "unknown error"


@click.group(cls=GraphpruneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphprune")
@click.option("--debug", is_flag=True, help="Print tracebacks for errors.")
@click.option("-v", "--log-level", type=click.Choice(["warning", "info", "debug"]), default="warning",
              help="Logging verbosity.")
def cli(debug: bool, log_level: str) -> None:
    """Structured pruning of ONNX models, verified, and shipped to edge targets."""
    _DEBUG["on"] = debug
    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from graphprune.commands import register_all

    register_all(cli)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        rv = cli.main(args=argv, prog_name="graphprune", standalone_mode=False)
    except click.UsageError as e:
        click.echo(f"Error: {_one_line(e.format_message())}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"Error: {_one_line(e.format_message())}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        return 1
    except UsageError as e:
        click.echo(f"Error: {e}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


def run() -> None:  # pragma: no cover
    sys.exit(main())
