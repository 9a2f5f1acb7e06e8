"""The one exception type for expected user mistakes (bad paths, configs, checkpoints).

Launchers print its message as one line and exit non-zero instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input, described so that the message alone says what to fix."""
