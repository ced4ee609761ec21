"""``python -m cnnjax.cli ARGS``: the ``cnnjax`` command."""

from cnnjax.cli import console_main

console_main()
