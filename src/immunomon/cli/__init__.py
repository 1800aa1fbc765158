"""Thin command-line layer over the immunomon library (``immunomon --help``).

Each verb lives in its own module and registers itself on :data:`app.app`.

Exit status (the contract scripts rely on):

- 0: done (for ``run``: every sample analysed or left out by design: QC failure, exclusion);
- 3: ``run`` completed but some samples could not be read or processed: each is named on
  stderr with its reason, one line per problem;
- 2: an error the user can fix (:class:`immunomon.errors.UserError`: bad input, bad option,
  a full disk, a read-only folder, not enough memory), one line per problem on stderr;
- 1: an internal error (a bug in immunomon): one line; the traceback is printed only with
  ``IMMUNOMON_DEBUG=1`` (a run also writes it to its ``run.log``).

Never a traceback otherwise; Python warnings are printed on one line each.
"""

import os
import sys

from immunomon.errors import UserError

from .app import app
from . import cluster, fcs, gate, init, normalise, run, study  # noqa: F401  (register the verbs)


def main() -> None:
    """Entry point of the ``immunomon`` console script."""
    from immunomon.pipeline.executor import one_line_warnings, tune_allocator

    tune_allocator()
    one_line_warnings()
    try:
        app()
    except UserError as err:
        _fail(2, err.problems)
    except OSError as err:  # e.g. a file the library opened itself
        where = f"{err.filename}: " if err.filename else ""
        _fail(2, [f"{where}{err.strerror or err}"])
    except MemoryError:
        _fail(2, ["immunomon: not enough memory (use fewer --workers, fewer events, or a "
                  "machine with more memory)"])
    except Exception as err:  # a bug: say so on one line, no traceback
        if os.environ.get("IMMUNOMON_DEBUG"):
            raise
        text = " ".join(str(err).split())[:300]
        _fail(1, [f"immunomon: internal error ({type(err).__name__}: {text}); please report "
                  "it; IMMUNOMON_DEBUG=1 prints the traceback"])


def one_line(problem: str) -> str:
    """``problem`` on one line: control characters that a message may quote from a file
    (a newline inside a CSV field) are escaped as Python writes them (``\\n``)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in problem)


def _fail(status: int, lines: list[str]) -> None:
    for line in lines:
        print(one_line(line), file=sys.stderr)
    sys.exit(status)
