"""``python -m immunomon``: the command-line interface."""

from immunomon.cli import main

main()
