"""Readers for the data formats the tasks ship in: GLUE TSV, CSV, JSON lines, Parquet, SQuAD JSON.

Every reader returns a list of row dicts and raises :class:`DataError` naming the file (and the
line or field) when the file is missing, truncated or malformed.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapterkit.errors import DataError, DataWarning

Row = dict[str, Any]

#: Format names accepted by :func:`read_table` (``fmt=``).
FORMATS = ("tsv", "tsv_noheader", "csv", "csv_noheader", "jsonl", "json", "parquet", "squad")

_EXTENSIONS = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def _parse(text: str, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank record; raises csv.Error on malformed quoting."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    return [(reader.line_num, record) for record in reader if record and record != [""]]


def _consistent(records: list[tuple[int, list[str]]]) -> bool:
    return len({len(r) for _, r in records}) <= 1


def _looks_csv_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] == '"' and '""' in value


def _tsv_records(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """Parse a TSV file, reading standard (CSV-dialect) quoting when the file uses it.

    GLUE-style files have stray, unbalanced quote marks and must be read literally; files written by
    Python's ``csv`` module or pandas quote fields that hold tabs, newlines or quotes (doubling the
    quotes inside). Standard quoting is used when it parses the whole file into rows of one width;
    when both readings work but differ, a :class:`DataWarning` says which was assumed.
    """
    literal = _parse(text, "\t", csv.QUOTE_NONE)
    if '"' not in text:
        return literal
    try:
        standard = _parse(text, "\t", csv.QUOTE_MINIMAL)
        standard_error = None if _consistent(standard) else "rows of different widths"
    except csv.Error as exc:
        standard, standard_error = [], str(exc)
    if standard_error is None:
        if _consistent(literal) and len(literal) == len(standard):
            changed = [(line, a, b) for (line, ra), (_, rb) in zip(literal, standard, strict=True)
                       for a, b in zip(ra, rb, strict=False) if a != b]
            # Quotes that protect a tab, a newline or a doubled quote can only be CSV quoting; a field
            # that is merely wrapped in quotes could also be text that starts and ends with quote marks.
            if changed and not any(ch in b for _, _, b in changed for ch in '\t\n\r"'):
                line, before, _ = changed[0]
                warnings.warn(DataWarning(
                    f"{path}: assumed standard CSV quoting: the quote marks around {len(changed)} fields are read "
                    f"as quoting and dropped (e.g. line {line}: {before[:40]!r}); texts that really begin and end "
                    "with quote marks must be written with the quotes doubled inside quotes"), stacklevel=4)
        return standard
    suspicious = next(((line, v) for line, r in literal for v in r if _looks_csv_quoted(v)), None)
    if suspicious is not None:
        warnings.warn(DataWarning(
            f"{path}: read quote marks literally: line {suspicious[0]} looks CSV-quoted ({suspicious[1][:40]!r}) but "
            f"the file is not valid CSV quoting as a whole ({standard_error})"), stacklevel=4)
    return literal


def _read_delimited(
    path: Path, delimiter: str, header: bool, fieldnames: Sequence[str] | None
) -> list[Row]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from exc
    try:
        records = _tsv_records(path, text) if delimiter == "\t" else _parse(text, delimiter, csv.QUOTE_MINIMAL)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed delimited file ({exc})") from exc
    rows: list[Row] = []
    names: list[str] | None = list(fieldnames) if fieldnames is not None else None
    for i, (line, record) in enumerate(records):
        if header and i == 0:
            if names is None:
                names = [c.strip() for c in record]
            continue
        if names is None:
            names = [str(k) for k in range(len(record))]
        if len(record) != len(names):
            raise DataError(f"{path}: line {line}: expected {len(names)} fields {names}, found {len(record)}")
        rows.append(dict(zip(names, record, strict=True)))
    return rows


def read_tsv(path: str | Path, header: bool = True, fieldnames: Sequence[str] | None = None) -> list[Row]:
    """Read a TSV file (GLUE-style, or written by Python's ``csv`` module / pandas).

    The file is decoded as ``utf-8-sig`` (a byte-order mark is dropped). Quote marks are kept as
    they are (GLUE files contain unbalanced quotes) unless the file is valid CSV-dialect quoting as a
    whole, e.g. quoted fields holding tabs, newlines or doubled quotes (see :func:`_tsv_records`).
    With ``header=False`` the column names come from ``fieldnames`` (or ``"0"``, ``"1"``, ...: the
    column indices); with a header and ``fieldnames`` given, ``fieldnames`` replace the header's
    names. A row whose field count differs from the header is an error naming the file and line.
    """
    path = _check_file(path)
    return _read_delimited(path, "\t", header, fieldnames)


def read_csv(path: str | Path, header: bool = True, fieldnames: Sequence[str] | None = None) -> list[Row]:
    """Read a comma-separated file (standard CSV quoting, BOM tolerated); header handling as :func:`read_tsv`."""
    path = _check_file(path)
    return _read_delimited(path, ",", header, fieldnames)


def read_jsonl(path: str | Path) -> list[Row]:
    """Read JSON lines: one JSON object per non-blank line."""
    path = _check_file(path)
    rows: list[Row] = []
    try:
        with path.open(encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise DataError(
                        f"{path}: line {lineno}: expected a JSON object, found {type(obj).__name__}"
                    )
                rows.append(obj)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from exc
    return rows


def read_parquet(path: str | Path) -> list[Row]:
    """Read a Parquet file with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _check_file(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read Parquet file ({exc})") from exc
    return table.to_pylist()


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from exc


def _flatten_squad(path: Path, obj: Any) -> list[Row]:
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise DataError(f"{path}: data: SQuAD JSON needs a top-level 'data' list")
    rows: list[Row] = []
    for a, article in enumerate(obj["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            try:
                context = para["context"]
                qas = para["qas"]
            except (KeyError, TypeError) as exc:
                raise DataError(f"{path}: data[{a}].paragraphs[{p}]: missing field {exc}") from exc
            for q, qa in enumerate(qas):
                try:
                    answers = qa.get("answers", [])
                    rows.append(
                        {
                            "id": str(qa["id"]),
                            "title": str(article.get("title") or f"article {a}"),
                            "question": qa["question"],
                            "context": context,
                            "answers": {
                                "text": [ans["text"] for ans in answers],
                                "answer_start": [int(ans["answer_start"]) for ans in answers],
                            },
                        }
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise DataError(
                        f"{path}: data[{a}].paragraphs[{p}].qas[{q}]: missing or invalid field {exc}"
                    ) from exc
    return rows


def read_squad_json(path: str | Path) -> list[Row]:
    """Flatten a SQuAD v1.1 JSON file to rows ``{id, title, question, context, answers}`` (``title``: the
    article's, or ``article N`` when it has none).

    ``answers`` is ``{"text": [...], "answer_start": [...]}`` (the Hugging Face layout).
    """
    path = _check_file(path)
    return _flatten_squad(path, _load_json(path))


def _sniff_json(path: Path) -> str:
    """Tell SQuAD JSON / a JSON array of objects / JSON lines apart for a ``.json`` or ``.txt`` file."""
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        first = ""
        for line in fh:
            if line.strip():
                first = line.strip()
                break
    if not first:
        return "jsonl"
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        return "json" if isinstance(obj.get("data"), list) else "jsonl"
    if first.startswith(("{", "[")):
        return "json"
    return "tsv"


def _read_json_any(path: Path) -> list[Row]:
    obj = _load_json(path)
    if isinstance(obj, dict) and "data" in obj:
        return _flatten_squad(path, obj)
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return obj
    if isinstance(obj, dict):
        return [obj]  # a single-line JSON lines file
    raise DataError(f"{path}: expected SQuAD JSON, a JSON array of objects, or JSON lines")


def detect_format(path: str | Path) -> str:
    """Pick a format name from the file extension (and, for .json/.txt, the content)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix in (".json", ".txt"):
        _check_file(path)
        kind = _sniff_json(path)
        if kind == "tsv" and suffix == ".json":
            raise DataError(f"{path}: not JSON")
        return kind
    raise DataError(
        f"{path}: cannot tell the format from the extension {suffix!r}; pass fmt= one of {list(FORMATS)}"
    )


def read_table(
    path: str | Path, fmt: str | None = None, fieldnames: Sequence[str] | None = None
) -> list[Row]:
    """Read ``path`` with the reader for ``fmt`` or, when ``fmt`` is None, for its extension.

    Extensions: ``.tsv``, ``.csv``, ``.jsonl``, ``.parquet``; ``.json`` is SQuAD JSON, a JSON array
    or JSON lines; ``.txt`` is JSON lines when its first line parses as JSON, else TSV.
    ``fmt="tsv_noheader"`` / ``"csv_noheader"`` read a headerless file with ``fieldnames`` (default: the
    column indices ``"0"``, ``"1"``, ...).
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "tsv":
        return read_tsv(path, header=True, fieldnames=fieldnames)
    if fmt == "tsv_noheader":
        return read_tsv(path, header=False, fieldnames=fieldnames)
    if fmt == "csv":
        return read_csv(path, header=True, fieldnames=fieldnames)
    if fmt == "csv_noheader":
        return read_csv(path, header=False, fieldnames=fieldnames)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "json":
        return _read_json_any(_check_file(path))
    if fmt == "parquet":
        return read_parquet(path)
    if fmt == "squad":
        return read_squad_json(path)
    raise DataError(f"{path}: fmt: unknown format {fmt!r}; known formats are {list(FORMATS)}")
