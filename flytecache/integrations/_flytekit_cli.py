"""``pyflyte run --flytecache DB``: flytekit's implicit-plugin hook (entry point group
``flytekit.plugins``, which ``import flytekit`` loads in every process).

Only inside the ``pyflyte`` command does it add the option, to ``pyflyte run``: with it (or
``FLYTECACHE_DB``) a local run caches through flytecache, as after
``flytecache.integrations.flytekit.install(DB)``. Everywhere else importing this module does
nothing, and it never lets an error escape into ``import flytekit``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)


def add_run_option(command: Any) -> None:
    """Add ``--flytecache DB`` to ``pyflyte run`` (the ``RunCommand`` group ``command``)."""
    from flytecache.integrations._cli_option import add_cli_option

    add_cli_option(
        command,
        runs="local executions",
        is_local=lambda params: not params.get("remote"),
        remote_hint="drop --remote (remote executions use the platform's cache)",
        install=_install,
    )


def _install(db: str) -> None:
    from flytecache.integrations import flytekit  # only when the option is used

    flytekit.install(db)


def _in_pyflyte() -> bool:
    return os.path.basename(sys.argv[0] if sys.argv else "") == "pyflyte"


if _in_pyflyte():
    try:
        from flytekit.clis.sdk_in_container import run as _run

        add_run_option(_run.run)
    except Exception as _error:  # an unexpected flytekit must still import
        log.debug("flytecache: pyflyte run --flytecache is unavailable: %s", _error)
