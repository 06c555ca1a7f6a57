"""``python -m flytecache``: the same as the ``flytecache`` command."""

from flytecache.cli import main

main()
