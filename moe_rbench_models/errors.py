"""The base of moe-rbench's own errors: each message names the problem (the file, line or option) and the fix.

The `moe-rbench` commands print such an error as one line, without a traceback; anything else is a bug and
keeps its traceback.
"""


class MoERBenchError(Exception):
    """A problem with the user's input, files or environment, explained in the message."""


class OptionError(MoERBenchError, ValueError):
    """An option or argument whose value cannot be used, and what it should be."""
