"""One error type for every malformed input file, always naming the file and the line."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file cannot be read as the format it claims to be.

    The message always starts with ``file:line:`` so that a user can open the spot directly.
    """

    def __init__(self, path: Path | str, line: int | None, problem: str, fix: str | None = None):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        message = f"{where}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)
