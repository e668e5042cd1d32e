"""The error a user can cause and fix: a wrong value, file or option.

``ssal``'s command line prints a ``UserError`` as one ``ssal: error:`` line (exit code 2); any
other exception is a bug and keeps its traceback. ``UserError`` is a ``ValueError``, so Python
callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["PATH_ERRORS", "UserError"]


class UserError(ValueError):
    """A value, file or option the user gave that ssal cannot use; the message names it and,
    where it can, says what to do instead."""


PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
"""OS errors about a path the user named (a missing data folder, an output that exists)."""
