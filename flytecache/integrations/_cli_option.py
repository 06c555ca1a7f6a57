"""``--flytecache DB`` on an SDK's own ``run`` command (``flyte run``, ``pyflyte run``).

Kept free of flytecache's heavier modules: it is imported while the SDK's command line starts,
and flytecache itself is imported only once the option is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["add_cli_option"]


def add_cli_option(
    command: Any,
    *,
    runs: str,
    is_local: Callable[[dict[str, Any]], bool],
    remote_hint: str,
    install: Callable[[str], None],
) -> None:
    """Add ``--flytecache DB`` (default ``$FLYTECACHE_DB``) to an SDK's click ``command``.

    Before the command runs, the option is taken out of its parameters (SDKs may refuse
    unknown names) and, when ``is_local(params)``, ``install(DB)`` is called; a failure is a
    usage error. Given on the command line for a remote run it is a usage error ending with
    ``remote_hint``; from the environment it is ignored there. ``runs`` names what is cached
    ("local runs") in the help text.
    """
    import click

    if any(param.name == "flytecache" for param in command.params):
        return
    command.params.append(
        click.Option(
            ["--flytecache"],
            metavar="DB",
            envvar="FLYTECACHE_DB",
            default=None,
            help=(
                f"Cache {runs} through flytecache: a SQLite path, a database URL or the "
                "http(s):// URL of `flytecache serve` [env: FLYTECACHE_DB]"
            ),
        )
    )
    invoke = command.invoke

    def invoke_with_flytecache(ctx: Any) -> Any:
        from flytecache.errors import FlyteCacheError

        db = ctx.params.pop("flytecache", None)
        from_command_line = (
            ctx.get_parameter_source("flytecache") is click.core.ParameterSource.COMMANDLINE
        )
        if db is not None and not db.strip():
            if from_command_line:
                raise click.UsageError("--flytecache needs a database path or URL")
            db = None  # FLYTECACHE_DB set but empty: as if unset
        if db:
            if is_local(ctx.params):
                try:
                    install(db)
                except FlyteCacheError as error:
                    raise click.UsageError(f"--flytecache {db}: {error}") from error
            elif from_command_line:
                raise click.UsageError(f"--flytecache caches {runs}: {remote_hint}")
        return invoke(ctx)

    command.invoke = invoke_with_flytecache
