"""``python -m catalog`` runs the catalog sub-commands (same as ``gridpacs catalog``)."""

from catalog.cli import main

main()
