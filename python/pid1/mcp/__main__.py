"""Entry point of ``python -m pid1.mcp``."""

from . import main

main()
