"""Reading a table file (CSV or Parquet) into a pyarrow Table, every failure one line.

The format comes from the file itself: Parquet files start (and end) with the bytes `PAR1`;
an image, a spreadsheet or another known binary format is named in the error; anything
else is read as CSV, decompressed where its first bytes show gzip, bz2, zstd or lz4. pyarrow's CSV
reader does not detect the delimiter, so `sniff_delimiter` picks it from the first 64 KiB
(see there). Every file gets a fingerprint (size, SHA-256 of its bytes, rows, columns) so a
resumed or evaluated run can tell that its table changed. pyarrow is imported inside the
functions: listing components must not need it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit.errors import ConfigError, DataError
from trainkit.inputfiles import special_kind

PARQUET_MAGIC = b"PAR1"
HEAD_BYTES = 16  # enough for every signature below
# What a file given as a table often is instead, by its first bytes: named in the error,
# rather than a CSV parse failure or advice about text encodings that cannot help.
NOT_TABLES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF87a", "a GIF image", ""),
    (b"GIF89a", "a GIF image", ""),
    (b"PK\x03\x04", "a zip archive", "; an Excel .xlsx workbook is one: save the sheet as CSV, or unzip the CSV"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel .xls workbook (or another OLE file)", "; save the sheet as CSV"),
    (b"%PDF-", "a PDF document", ""),
    (b"ARROW1", "an Arrow IPC (Feather) file", "; write it as Parquet (pyarrow.parquet.write_table)"),
    (b"\x93NUMPY", "a NumPy .npy array", ""),
    (b"SQLite format 3\x00", "an SQLite database", ""),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file", ""),
    (b"\xfd7zXZ\x00", "xz-compressed", "; pyarrow reads gzip, bz2, zstd and lz4 files: decompress it"),
)
# Compressed CSV, told by its first bytes rather than by its name (which is how pyarrow
# tells it, and only for lower-case .gz/.bz2/.zst/.lz4): data.CSV.GZ or a gzip file named
# .csv reads as what it is.
COMPRESSION = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
DELIMITERS = ",;\t|"
SAMPLE_BYTES = 1 << 16
SHOWN = 5  # rows or values named in a message before "and N more"


def listing(items: list[str], total: int | None = None) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more'."""
    total = len(items) if total is None else total
    shown = ", ".join(items[:SHOWN])
    return shown if total <= SHOWN else f"{shown} and {total - SHOWN} more"


@dataclass
class TableFile:
    """One file as read: its table, how to name its rows, and its fingerprint."""

    key: str  # the config key that named it: data.path or data.test_path
    path: Path
    table: Any  # pyarrow.Table
    format: str  # "csv" or "parquet"
    delimiter: str | None
    fingerprint: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.path)

    def row(self, index: int) -> int:
        """A 0-based data row as the user finds it: CSV rows as a spreadsheet numbers them (the
        header is row 1; pyarrow numbers its parse errors the same way), Parquet rows from 1."""
        return int(index) + (2 if self.format == "csv" else 1)

    def rows(self, indices: Any) -> str:
        """'rows 4, 9, 17 and 3 more' for 0-based data rows."""
        numbers = [str(self.row(i)) for i in list(indices[:SHOWN])]
        word = "row" if len(indices) == 1 else "rows"
        return f"{word} {listing(numbers, len(indices))}"


# pyarrow <-> numpy without pandas. pyarrow's to_numpy() and pa.array() first ask whether
# their argument is a pandas object, which imports pandas: half a second of every table run
# (7% of the benchmark's) for a library the run never uses. Fixed-width columns come over
# through their buffers instead, and arrays are built from buffers.


def _bits(buffer: Any, offset: int, n: int) -> Any:
    import numpy as np

    packed = np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    return np.unpackbits(packed, count=offset + n, bitorder="little")[offset:].astype(bool)


def to_numpy(array: Any) -> Any:
    """A boolean, integer or floating pyarrow array (or chunked array) as a writable numpy
    array; null entries become False, -1 or NaN."""
    import numpy as np
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind, n, offset = array.type, len(array), array.offset
    validity, data = array.buffers()[:2]
    default: float | int | bool
    if pa.types.is_boolean(kind):
        values, default = _bits(data, offset, n), False
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        code = "f" if pa.types.is_floating(kind) else "i" if pa.types.is_signed_integer(kind) else "u"
        dtype = np.dtype(f"{code}{kind.bit_width // 8}")
        values = np.frombuffer(data, dtype, count=offset + n)[offset:].copy() if n else np.zeros(0, dtype)
        default = np.nan if code == "f" else -1
    else:
        raise TypeError(f"to_numpy: {kind} is not a boolean or numeric array")
    if array.null_count:
        missing = ~_bits(validity, offset, n)
        if values.dtype.kind == "u":  # room for the -1
            values = values.astype(np.int64)
        values[missing] = default
    return values


def arrow_array(values: Any) -> Any:
    """A pyarrow array of strings (from a list of str) or of int64 (from integers)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        encoded = [v.encode("utf8") for v in values]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        data = pa.py_buffer(b"".join(encoded))
        return pa.Array.from_buffers(pa.large_string(), len(encoded), [None, pa.py_buffer(offsets), data]).cast(
            pa.string()
        )
    numbers = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(numbers), [None, pa.py_buffer(numbers)])


def fingerprint(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of the bytes: a copy of the same file matches, any edit does not."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def sniff_delimiter(sample: str) -> str:
    """The delimiter among , ; tab | that splits the sample's rows most consistently.

    Each candidate splits the sample's complete rows with Python's csv module (so quoted
    fields holding delimiters or newlines count right); it must give the header at least two
    fields, and the winner is the one whose rows most often have the header's field count,
    then the one giving more fields (a ';' file with decimal commas splits consistently on ';'
    only). A single-column file has no delimiter to find: ','.
    """
    sample = sample.lstrip("\ufeff")
    complete = sample[: sample.rfind("\n") + 1] or sample  # drop a row cut off by the sample's end
    best, best_score = ",", (0.0, 1)
    for delimiter in DELIMITERS:
        try:
            rows = [r for r in csv.reader(io.StringIO(complete), delimiter=delimiter) if r]
        except csv.Error:  # e.g. NUL bytes: not this delimiter's fault, but not a usable split either
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(len(r) == width for r in rows) / len(rows), width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _check_path(key: str, value: str, resuming: bool) -> Path:
    path = Path(value).expanduser()
    moved = f" (if it moved, give its new place with {key}=...)" if resuming else ""
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigError(f"{key}: file not found: {value}{where}{moved}")
    if path.is_dir():
        raise ConfigError(f"{key}: {value} is a folder; give a .csv or .parquet file")
    kind = special_kind(path)  # a named pipe would block the reader until a writer came; /dev/zero never ends
    if kind is not None:
        raise ConfigError(f"{key}: {value} is {kind}, not a file; give a .csv or .parquet file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{value}: cannot be read (permission denied)")
    return path


def not_a_table(head: bytes) -> str | None:
    """What a file starting with `head` is, when its first bytes say it is no CSV or
    Parquet table ("a PNG image, not ..."); None otherwise."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image, not a CSV or Parquet table"
    for magic, what, advice in NOT_TABLES:
        if head.startswith(magic):
            return f"{what}, not a CSV or Parquet table{advice}"
    return None


def compression_of(head: bytes) -> str | None:
    """pyarrow's name for the compression a file's first bytes show, or None."""
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bz2"
    return next((name for magic, name in COMPRESSION if head.startswith(magic)), None)


def _source(path: Path, compression: str | None) -> Any:
    """What pyarrow's CSV reader reads: the file's bytes, decompressed as its content says
    (given the path itself, pyarrow would go by the name)."""
    import pyarrow as pa

    return pa.input_stream(str(path), compression=compression)


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None


def _ragged_rows(path: Path, compression: str | None, parse: Any, read: Any) -> list[Any]:
    """The rows whose field count differs from the header's, with pyarrow's row numbers
    (only a single-threaded read numbers them). Called only after a parse error."""
    import pyarrow.csv as pcsv

    bad: list[Any] = []

    def note(row: Any) -> str:
        bad.append(row)
        return "skip"

    options = pcsv.ParseOptions(
        delimiter=parse.delimiter, newlines_in_values=True, invalid_row_handler=note, quote_char=parse.quote_char
    )
    # pyarrow hands the handler each row as text decoded as UTF-8: a ragged row holding a byte
    # that is not UTF-8 fails inside pyarrow (printed as "Exception ignored", never raised) and
    # goes unnamed. Read as latin-1 here instead: every byte is a character, and the ASCII
    # delimiters, quotes and newlines that decide a row's field count stay where they were.
    encoding = "latin-1" if _is_utf8(read.encoding) else read.encoding
    single = pcsv.ReadOptions(use_threads=False, encoding=encoding)
    try:
        pcsv.read_csv(_source(path, compression), read_options=single, parse_options=options)
    except Exception:
        pass  # the caller reports the first error if no ragged row explains it
    return bad


def _read_csv(
    path: Path, compression: str | None, delimiter: str | None, encoding: str, decimal: str
) -> tuple[Any, str]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        with pa.input_stream(str(path), compression=compression) as stream:
            raw = stream.read(SAMPLE_BYTES)
    except (OSError, pa.ArrowException) as exc:  # a damaged .gz, say
        raise DataError(f"{path}: cannot read ({_first_line(exc)})") from None
    if _is_utf8(encoding):
        if raw.startswith(UTF16_BOMS):
            raise DataError(f"{path}: is UTF-16 text (it starts with a byte-order mark); set data.encoding=utf-16")
        if b"\x00" in raw:
            raise DataError(
                f"{path}: holds binary data, not CSV text (a NUL byte at byte {raw.index(0)}, "
                f"after {raw[: min(raw.index(0), 8)]!r})"
            )
    sample = raw.decode(encoding, errors="replace")
    if not sample.lstrip("\ufeff").strip():
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    delimiter = delimiter or sniff_delimiter(sample)
    read = pcsv.ReadOptions(encoding=encoding)
    parse = pcsv.ParseOptions(delimiter=delimiter)
    # Empty cells and the usual markers (NA, N/A, null, nan, ...) are missing in text columns
    # too, as pandas reads them; otherwise "" would become a category of its own.
    convert = pcsv.ConvertOptions(strings_can_be_null=True, decimal_point=decimal)
    try:
        table = pcsv.read_csv(
            _source(path, compression), read_options=read, parse_options=parse, convert_options=convert
        )
        table.column_names  # noqa: B018 (pyarrow decodes the header's names only when asked)
        return table, delimiter
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not {encoding} text (byte {exc.object[exc.start : exc.start + 1]!r} in the header); "
            "set data.encoding to the file's encoding, e.g. latin-1"
        ) from None
    except pa.ArrowInvalid as exc:
        # Quoted values may hold newlines, which the fast parallel read does not allow.
        slow = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        try:
            table = pcsv.read_csv(
                _source(path, compression), read_options=read, parse_options=slow, convert_options=convert
            )
            return table, delimiter
        except pa.ArrowInvalid:
            pass
        bad = _ragged_rows(path, compression, parse, read)
        if bad:
            where = [f"{r.number} ({r.actual_columns} field{'' if r.actual_columns == 1 else 's'})" for r in bad]
            rows = f"row {where[0]} does" if len(bad) == 1 else f"rows {listing(where)} do"
            raise DataError(
                f"{path}: {rows} not have the header's {bad[0].expected_columns} fields "
                f"(delimiter {delimiter!r}; rows counted with the header as row 1)"
            ) from None
        raise DataError(f"{path}: cannot read as CSV (delimiter {delimiter!r}): {_first_line(exc)}") from None


def read_table(
    key: str,
    value: str,
    *,
    delimiter: str | None = None,
    encoding: str = "utf8",
    decimal: str = ".",
    resuming: bool = False,
) -> TableFile:
    """Read the file a config key names; DataError/ConfigError with one line if it cannot be used."""
    path = _check_path(key, value, resuming)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    other = not_a_table(head)
    if head[:4] == PARQUET_MAGIC:
        table, fmt, used = _read_parquet(path), "parquet", None
    elif other is not None:
        raise DataError(f"{path}: {other}")
    elif path.suffix.lower() in PARQUET_SUFFIXES:
        raise DataError(f"{path}: not a Parquet file (it starts with {head[:4]!r}, a Parquet file with b'PAR1')")
    else:
        table, used = _read_csv(path, compression_of(head), delimiter, encoding, decimal)
        fmt = "csv"
    names = list(table.column_names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        where = "; ".join(
            f"'{n}' is columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}" for n in repeated
        )
        raise DataError(f"{path}: column names must be unique: {where}")
    if table.num_rows == 0:
        raise DataError(f"{path}: has a header ({listing(names)}) but no rows")
    if fmt == "csv":
        _check_text(path, table, encoding)
    prints = {**fingerprint(path), "rows": table.num_rows, "columns": names}
    return TableFile(key, path, table, fmt, used, prints)


def _check_text(path: Path, table: Any, encoding: str) -> None:
    """pyarrow's CSV reader keeps undecodable text as binary columns: name the first bad value."""
    import pyarrow as pa

    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_binary(column.type) and not pa.types.is_large_binary(column.type):
            continue
        for index, value in enumerate(column.to_pylist()):
            if value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: column '{name}' is not {encoding} text (row {index + 2}: "
                    f"{value[max(0, exc.start - 8) : exc.start + 8]!r}); set data.encoding to the file's "
                    "encoding, e.g. latin-1"
                ) from None
        raise DataError(f"{path}: column '{name}' holds binary data, not numbers or text")
