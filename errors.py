"""The exceptions the command-line programs turn into one line, `error: <message>`, and an exit code: for
anything the user can fix. The message says what is wrong and what to do (a traceback only with --debug).
"""


class UserError(Exception):
    """A problem with the user's input, files or environment."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line or config value (exit code 2, like argparse)."""

    exit_code = 2


class DataError(UserError):
    """A data set file that is missing, corrupt or of the wrong format."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


class Interrupted(UserError):
    """Training stopped by a signal; exit code 128 + the signal number, as shells report it."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
