"""``python -m memring.mcp``: the same as the ``memring-mcp`` command."""

from . import main

main()
