"""The package's one exception type for user mistakes (bad names, files, options).

The CLI turns a :class:`T2Error` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class T2Error(Exception):
    """A user-facing error: the message says what went wrong and what to do."""
