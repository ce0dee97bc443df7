"""The one exception type the command-line programs turn into a one-line message.

Raise `UserError` (or a subclass) for anything the user can fix: a missing or corrupt file, a bad
flag value, missing pretrained weights. The CLIs print `error: <message>` on stderr and exit with
`exit_code` (2 for bad usage, 1 otherwise), without a traceback unless `--debug` is given.
"""


class UserError(Exception):
    """A problem with the user's input, files or environment; str(e) says what to do."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line value (exit code 2, like argparse)."""

    exit_code = 2


class DataError(UserError):
    """A data set file that is missing, corrupt or of the wrong format."""
