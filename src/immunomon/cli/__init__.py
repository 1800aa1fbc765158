"""Thin command-line layer over the immunomon library (``immunomon --help``).

Each verb lives in its own module and registers itself on :data:`app.app`.
Errors a user can cause (:class:`immunomon.errors.UserError`) are printed to
stderr, one line per problem, with exit status 2 and no traceback.
"""

import sys

from immunomon.errors import UserError

from .app import app
from . import cluster, fcs, gate, init, normalise, run, study  # noqa: F401  (register the verbs)


def main() -> None:
    """Entry point of the ``immunomon`` console script."""
    from immunomon.pipeline.executor import tune_allocator

    tune_allocator()
    try:
        app()
    except UserError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        sys.exit(2)
