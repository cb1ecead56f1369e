"""The user-error base class: what the command line shows as one line with exit code 2.

Anything else that escapes a run is a bug and keeps its traceback. `UserError` subclasses
ValueError so code that caught ValueError around user input keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input (config, files, folders); the message says how to fix it."""
