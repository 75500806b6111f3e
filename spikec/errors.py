"""The one error type for user errors.

A SpikecError is something the user can fix: a missing or malformed file, an
unsupported op, an option out of range. The CLI prints it as one line
(`error: <message>`) and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class SpikecError(Exception):
    """A user error. The message names the file, node, tensor or option at fault."""
