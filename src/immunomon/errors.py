"""Errors a user can cause (bad input files, bad manifests, bad options).

The CLI prints every problem of a :class:`UserError` to stderr, one line each, and
exits with status 2 without a traceback. Library code raises subclasses of it for
anything that is the input's fault, never for programming errors.
"""


class UserError(Exception):
    """An error caused by the user's input.

    Parameters
    ----------
    problems
        One message per problem, each naming the file (and row/column or byte offset
        where known) and the problem. A single string is accepted.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):  # from a worker process: the same problems, one per line
        return type(self), (self.problems,)
