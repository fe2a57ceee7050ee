"""Reading table files: formats, delimiters, encodings, and a one-line error for each bad file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from helpers_tables import rule_columns, write_csv, write_parquet
from trainkit.builtin.table_read import read_table, sniff_delimiter
from trainkit.errors import ConfigError, DataError

pytest.importorskip("pyarrow")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a,b,c\n1,2,3\n4,5,6\n", ","),
        ("a;b;c\n1,5;2,5;3\n4;5,25;6\n", ";"),  # decimal commas: only ';' splits every row alike
        ("a\tb\n1\t2\n", "\t"),
        ("a|b|c\n1|2|3\n", "|"),
        ('name,note\n"Smith; John","a|b; c"\n"Doe; Jane","x; y"\n', ","),  # delimiters inside quotes
        ('a;b\n"1\n2";3\n4;5\n', ";"),  # a quoted newline
        ("\ufeffa;b\n1;2\n", ";"),
        ("only\n1\n2\n", ","),  # one column: nothing to find
        ("a,b,c\n1,2,3\n4,5,6\n7,8", ","),  # the sample may end inside a row
    ],
)
def test_the_delimiter_is_sniffed(text, expected):
    assert sniff_delimiter(text) == expected


def test_csv_with_bom_quotes_and_a_semicolon(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfid;name;score\n1;"Smith; John";1,5\n2;"say ""hi""";2\n')
    file = read_table("data.path", str(path), decimal=",")
    assert file.table.column_names == ["id", "name", "score"] and file.delimiter == ";"
    assert file.table.column("name").to_pylist() == ["Smith; John", 'say "hi"']
    assert file.table.column("score").to_pylist() == [1.5, 2.0]


def test_quoted_newlines_and_gzip(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write('a,b\n"one\nline",1\n"two",2\n')
    file = read_table("data.path", str(path))
    assert file.table.column("a").to_pylist() == ["one\nline", "two"]
    assert file.fingerprint["rows"] == 2 and len(file.fingerprint["sha256"]) == 64


def test_empty_cells_and_na_markers_are_missing_in_text_columns_too(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,x\n,NA\n3,\n")
    file = read_table("data.path", str(path))
    assert file.table.column("a").to_pylist() == [1, None, 3]
    assert file.table.column("b").to_pylist() == ["x", None, None]


def test_parquet_is_read_whatever_its_name(tmp_path):
    columns = rule_columns(20)
    path = write_parquet(tmp_path / "data.bin", columns)
    file = read_table("data.path", str(path))
    assert file.format == "parquet" and file.table.column("color").to_pylist() == columns["color"]
    assert file.row(0) == 1  # Parquet rows count from 1; CSV rows as a spreadsheet shows them
    assert read_table("data.path", str(write_csv(tmp_path / "d.csv", columns))).row(0) == 2


def _error(tmp_path, content: bytes, name: str = "t.csv", **options) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_table("data.path", str(path), **options)
    assert type(info.value).exit_code == 1 and "\n" not in str(info.value)
    return str(info.value).replace(str(path), "FILE")


def test_bad_files_each_get_one_line(tmp_path):
    assert _error(tmp_path, b"") == "FILE: the file is empty (no header, no rows)"
    assert _error(tmp_path, b"\n\n  \n") == "FILE: the file is empty (no header, no rows)"
    assert _error(tmp_path, b"a,b,c\n") == "FILE: has a header (a, b, c) but no rows"
    assert _error(tmp_path, b"a,b,a\n1,2,3\n") == "FILE: column names must be unique: 'a' is columns 1, 3"
    assert _error(tmp_path, b"a,b\n1,2\n3,4,5\n6,7\n8\n") == (
        "FILE: rows 3 (3 fields), 5 (1 field) do not have the header's 2 fields "
        "(delimiter ','; rows counted with the header as row 1)"
    )
    assert _error(tmp_path, b"hello", name="t.parquet") == (
        "FILE: not a Parquet file (it starts with b'hell', a Parquet file with b'PAR1')"
    )
    assert _error(tmp_path, b"PAR1 truncated", name="t.parquet").startswith("FILE: not a readable Parquet file (")
    assert _error(tmp_path, b"a,b\n1,caf\xe9\n") == (
        "FILE: column 'b' is not utf8 text (row 2: b'caf\\xe9'); set data.encoding to the file's encoding, e.g. latin-1"
    )
    assert _error(tmp_path, b"a,caf\xe9\n1,2\n") == (
        "FILE: not utf8 text (byte b'\\xe9' in the header); set data.encoding to the file's encoding, e.g. latin-1"
    )


def test_a_ragged_row_that_is_not_utf8_is_named_and_nothing_else_printed(tmp_path, capfd):
    # pyarrow decodes a ragged row's text as UTF-8 for its handler; a byte that is not
    # UTF-8 made that fail inside pyarrow ("Exception ignored" on stderr) and the row unnamed.
    assert _error(tmp_path, b"a,b\n1,2\n3,4,\xe9\n6,7\n") == (
        "FILE: row 3 (3 fields) does not have the header's 2 fields "
        "(delimiter ','; rows counted with the header as row 1)"
    )
    assert capfd.readouterr().err == ""


def test_a_file_of_another_kind_is_named_not_parsed(tmp_path):
    """An image, a spreadsheet or a UTF-16 export given as a table: what it is, not a CSV
    parse error or advice to try latin-1."""
    not_table = "not a CSV or Parquet table"
    assert _error(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(40)) == f"FILE: a PNG image, {not_table}"
    assert _error(tmp_path, b"\xff\xd8\xff\xe0" + bytes(40), name="t.parquet") == f"FILE: a JPEG image, {not_table}"
    assert _error(tmp_path, b"RIFF\x10\x00\x00\x00WEBPVP8 ") == f"FILE: a WebP image, {not_table}"
    assert _error(tmp_path, b"PK\x03\x04" + bytes(40), name="t.xlsx") == (
        f"FILE: a zip archive, {not_table}; an Excel .xlsx workbook is one: save the sheet as CSV, or unzip the CSV"
    )
    assert _error(tmp_path, b"ARROW1\x00\x00" + bytes(40), name="t.feather") == (
        f"FILE: an Arrow IPC (Feather) file, {not_table}; write it as Parquet (pyarrow.parquet.write_table)"
    )
    assert _error(tmp_path, "a,b\n1,2\n".encode("utf-16")) == (
        "FILE: is UTF-16 text (it starts with a byte-order mark); set data.encoding=utf-16"
    )
    assert _error(tmp_path, b"a,b\n1,\x00\x01\x02\n") == (
        "FILE: holds binary data, not CSV text (a NUL byte at byte 6, after b'a,b\\n1,')"
    )
    utf16 = tmp_path / "u.csv"
    utf16.write_bytes("a,b\n1,2\n".encode("utf-16"))
    assert read_table("data.path", str(utf16), encoding="utf-16").table.column("b").to_pylist() == [2]


@pytest.mark.parametrize("name", ["t.csv", "T.CSV.GZ", "t.csv.gz", "t.bz2", "t.zst"])
@pytest.mark.parametrize("codec", ["gzip", "bz2", "zstd"])
def test_a_compressed_csv_is_read_by_its_content_whatever_its_name(tmp_path, name, codec):
    import pyarrow as pa

    if not pa.Codec.is_available(codec):
        pytest.skip(f"this pyarrow has no {codec}")
    path = tmp_path / name
    with pa.CompressedOutputStream(str(path), codec) as out:
        out.write(b"a,b\n1,x\n2,y\n")
    file = read_table("data.path", str(path))
    assert file.table.column("b").to_pylist() == ["x", "y"] and file.fingerprint["rows"] == 2
    plain = tmp_path / "plain.csv.gz"  # a .gz name on a file that is not compressed reads as it is
    plain.write_bytes(b"a,b\n1,x\n")
    assert read_table("data.path", str(plain)).table.column("a").to_pylist() == [1]


def test_another_encoding_reads_when_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("ville,n\nCréteil,1\nSète,2\n".encode("latin-1"))
    assert read_table("data.path", str(path), encoding="latin-1").table.column("ville").to_pylist() == [
        "Créteil",
        "Sète",
    ]


def test_a_path_that_is_not_a_file_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^data.path: file not found: nope.csv \(relative to {tmp_path}\)$"):
        read_table("data.path", "nope.csv")
    with pytest.raises(ConfigError, match=r"if it moved, give its new place with data.test_path=\.\.\.\)$"):
        read_table("data.test_path", "nope.csv", resuming=True)
    with pytest.raises(ConfigError, match="is a folder; give a .csv or .parquet file"):
        read_table("data.path", str(tmp_path))


def test_arrow_to_numpy_keeps_values_offsets_and_nulls():
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from trainkit.builtin.table_read import arrow_array, to_numpy

    ints = pa.chunked_array([pa.array([1, None, 3]), pa.array([4, 5])])
    assert to_numpy(ints).tolist() == [1, -1, 3, 4, 5]
    assert to_numpy(ints.combine_chunks().slice(1, 3)).tolist() == [-1, 3, 4]  # an offset into the buffers
    floats = pa.array([1.5, None, -2.0], pa.float32())
    got = to_numpy(floats)
    assert got.dtype == np.float32 and np.isnan(got[1]) and got[[0, 2]].tolist() == [1.5, -2.0]
    flags = pa.array([True, None, False, True, True, False, True, False, True, True])
    assert to_numpy(flags.slice(3)).tolist() == [True, True, False, True, False, True, True]  # a bit offset
    assert to_numpy(flags).tolist() == [True, False, False, True, True, False, True, False, True, True]
    assert to_numpy(pa.array([200, None], pa.uint8())).tolist() == [200, -1]
    assert to_numpy(pa.array([], pa.int64())).tolist() == []
    writable = to_numpy(pa.array([1, 2]))
    writable[0] = 7  # a copy: the caller may change it
    texts = arrow_array(["b", "é", ""])
    assert texts.type == pa.string() and texts.to_pylist() == ["b", "é", ""]
    assert to_numpy(pc.index_in(pa.array(["é", "x", None]), value_set=texts)).tolist() == [1, -1, -1]
    assert pa.array(["p", "q", "r"]).take(arrow_array(np.array([2, 0]))).to_pylist() == ["r", "p"]


def test_a_table_run_does_not_import_pandas(tmp_path):
    """pyarrow's own numpy conversions import pandas (half a second) without using it."""
    import subprocess
    import sys

    from helpers_tables import COLORS

    columns = rule_columns(300)
    columns["color"] = [None if i % 7 == 0 else c for i, c in enumerate(columns["color"])]
    write_csv(tmp_path / "t.csv", columns)
    assert set(columns["color"]) > set(COLORS)
    code = (
        "import sys\n"
        "from trainkit.builtin.table import table\n"
        f"table(seed=0, path={str(tmp_path / 't.csv')!r}, target='label', missing='mean')\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_or_a_device_is_refused_before_reading(tmp_path):
    """Reading a FIFO would wait for a writer forever, /dev/zero would never end: one line
    instead. In a subprocess with a time limit, so that a regression fails instead of hanging."""
    import subprocess
    import sys

    os.mkfifo(tmp_path / "rows.csv")
    for path, kind in [(tmp_path / "rows.csv", "a named pipe (FIFO)"), (Path("/dev/zero"), "a character device")]:
        code = (
            "from trainkit.builtin.table_read import read_table\n"
            "from trainkit.errors import ConfigError\n"
            f"try:\n    read_table('data.path', {str(path)!r})\nexcept ConfigError as exc:\n    print(exc)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == f"data.path: {path} is {kind}, not a file; give a .csv or .parquet file"
