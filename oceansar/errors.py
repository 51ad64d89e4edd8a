"""One way to fail: a UserError for what the user can fix, one `main` wrapper for every stage.

A UserError (or a subclass naming its kind: ConfigError, DataError, ...) is printed as `error: <one line>` and the
process exits with its code: 1 bad input or state, 2 bad config, 3 a non-finite loss. Anything else is a bug in
our code and keeps its traceback. Every stage script ends with

    if __name__ == "__main__":
        errors.main(run)          # run(argv) does the stage's work
"""

import sys
from contextlib import contextmanager

EXIT_INPUT, EXIT_CONFIG, EXIT_NON_FINITE = 1, 2, 3


class UserError(Exception):
    """A mistake in the user's input, config or environment: reported as one line, no traceback."""
    code = EXIT_INPUT

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


@contextmanager
def reported():
    """Inside: a UserError prints one line and exits with its code; anything else propagates."""
    try:
        yield
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(e.code)


def main(run, argv=None):
    """A stage's entry point: run(argv) with user errors reported as one line."""
    with reported():
        return run(sys.argv[1:] if argv is None else argv)
