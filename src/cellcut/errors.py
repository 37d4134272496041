"""One family of errors for everything a user can get wrong.

Every error carries four parts so that the command line can print it as a single line::

    error: <what> in <file>: <why>; <what to do>

The CLI exits with code 2 on any :class:`CellcutError` and shows the traceback only with
``--debug``. The Python API raises the same exceptions, so callers can catch one base class.
"""

from __future__ import annotations

import os


class CellcutError(Exception):
    """Base class of the errors cellcut reports to users.

    Parameters
    ----------
    what
        What failed, e.g. ``"cannot read volume"``.
    why
        The cause, e.g. ``"the file does not exist"``.
    hint
        What the user can do about it.
    file
        The file concerned, if any.
    """

    exit_code = 2

    def __init__(
        self, what: str, why: str, hint: str | None = None, file: str | os.PathLike | None = None
    ) -> None:
        self.what = what
        self.why = why
        self.hint = hint
        self.file = None if file is None else os.fspath(file)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f" in {self.file}" if self.file else ""
        text = f"{self.what}{where}: {self.why}"
        if self.hint:
            text += f"; {self.hint}"
        return " ".join(text.split())  # one line, whatever the causes quoted in it hold

    def __str__(self) -> str:
        return self.message


class InputFileError(CellcutError):
    """A file cannot be found, recognised or decoded."""


class VolumeError(CellcutError, ValueError):
    """The data was read but is not a usable 3D volume (shape, dtype or values)."""


class OutputError(CellcutError):
    """An output cannot be written (exists, not writable)."""


class ConfigError(CellcutError, ValueError):
    """A setting is invalid."""


class CheckpointError(CellcutError):
    """A checkpoint or model file is missing, corrupt or does not match."""


class ClusterError(CellcutError):
    """Block work on a dask cluster failed (after its retries)."""
