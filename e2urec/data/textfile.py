"""Line reading and field splitting that turn every fault into a DataFormatError with a line."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from e2urec.data.errors import DataFormatError


def decode_file(path: Path, encoding: str) -> str:
    """Decode a whole text file, reporting the first undecodable line.

    ``encoding="latin-1"`` means "the ISO-8859-1 files GroupLens ships": those files are also often
    found re-encoded as UTF-8, so valid UTF-8 is taken as UTF-8 and anything else as ISO-8859-1
    (which can decode any byte). Every other encoding is strict.
    """
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise DataFormatError(
            path,
            data[: data.index(b"\x00")].count(b"\n") + 1,
            "contains NUL bytes, so it is not a text file in the expected encoding",
            f"is it UTF-16? re-save it as {encoding}",
        )
    if encoding == "latin-1":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFormatError(
            path,
            line,
            f"byte 0x{data[err.start]:02x} is not valid {encoding}",
            f"the file must be {encoding}; re-save it in that encoding",
        ) from None


def numbered_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for the non-blank lines of a text file."""
    for number, line in enumerate(decode_file(path, encoding).splitlines(), start=1):
        if line.strip():
            yield number, line


def split_fields(
    path: Path, line_no: int, line: str, sep: str, names: Sequence[str], *, extra_ok: bool = False
) -> list[str]:
    """Split a line into exactly ``len(names)`` fields (more allowed with ``extra_ok``)."""
    fields = line.split(sep)
    if len(fields) < len(names) or (len(fields) > len(names) and not extra_ok):
        layout = sep.join(names)
        hint = f"expected {len(names)} fields separated by {sep!r} ({layout}), found {len(fields)}"
        fix = None
        if len(fields) == 1:
            found = next((s for s in ("::", "\t", "|", ",", ";") if s != sep and s in line), None)
            fix = (
                f"the line seems to use {found!r}: is this the right file or format?"
                if found
                else ("is the separator right?")
            )
        raise DataFormatError(path, line_no, hint, fix)
    return fields


def parse_int(path: Path, line_no: int, value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise DataFormatError(
            path, line_no, f"{what} {value.strip()!r} is not an integer"
        ) from None


def parse_rating(path: Path, line_no: int, value: str, low: float = 1, high: float = 5) -> float:
    try:
        rating = float(value.strip())
    except ValueError:
        raise DataFormatError(path, line_no, f"rating {value.strip()!r} is not a number") from None
    if not low <= rating <= high:
        raise DataFormatError(path, line_no, f"rating {rating:g} is outside {low:g}..{high:g}")
    return rating
