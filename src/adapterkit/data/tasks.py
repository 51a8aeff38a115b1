"""The task registry: what each data set's files, columns, labels and metric are, and loaders.

A loaded example is a dict:

- classification: ``{"text": str, "text_pair": str | None, "label": int}`` (label id)
- regression: ``{"text": str, "text_pair": str | None, "label": float}``
- qa: ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}`` (plus
  ``"title"``, the article, when the file has one)

Registered task files are relative to a data directory laid out like ``../shared/data`` (see its
README); pass ``data_dir`` or set ``ADAPTERKIT_DATA_DIR``. The ``sample_sentiment`` task ships with
the package and needs no data directory.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterkit.data.formats import FORMATS, detect_format, read_table
from adapterkit.data.sampling import carve_dev
from adapterkit.errors import ConfigError, DataError
from adapterkit.metrics import METRICS
from adapterkit.registry import Registry

Example = dict[str, Any]

KINDS = ("classification", "regression", "qa")
DATA_DIR_ENV = "ADAPTERKIT_DATA_DIR"
#: Seed used when a task's dev split is carved out of its train file (``dev_from_train``).
CARVE_SEED = 0
#: Seed of the article shuffle of tasks split by article (``article_split``).
ARTICLE_SPLIT_SEED = 0
ARTICLE_SPLITS = ("train", "dev", "test")
#: XQuAD's 48 articles: 32 train, 8 dev, 8 test.
XQUAD_ARTICLE_SPLIT = (2 / 3, 1 / 6, 1 / 6)
_DEFAULT_METRIC = {"classification": "accuracy", "regression": "spearman", "qa": "squad_f1"}


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files are and how to turn their rows into examples."""

    name: str
    kind: str  # "classification" | "regression" | "qa"
    text_columns: tuple[str, ...]  # source column names, 1 or 2 (QA: ("question", "context"))
    label_column: str | None
    labels: tuple[str, ...] | None  # label names in id order, as they appear in the file
    metric: str  # primary metric name, a key of adapterkit.metrics.METRICS
    files: dict[str, str]  # split -> path relative to the data dir (or absolute)
    fmt: str | None = None  # reader override, e.g. "tsv_noheader"; "hub" for Hub-backed tasks
    fieldnames: tuple[str, ...] | None = None  # for headerless files
    hub: tuple[str, str | None] | None = None  # Hugging Face Hub (dataset, config)
    description: str = ""
    #: When set, split "dev" is carved (stratified, seed CARVE_SEED) out of the "train" file and
    #: "train" is the remainder; a count or a fraction in (0, 1).
    dev_from_train: int | float | None = field(default=None)
    #: When set (train, dev, test fractions), the single file ``files["all"]`` (SQuAD JSON) is split by
    #: article title (seed ARTICLE_SPLIT_SEED, :func:`~adapterkit.data.sampling.split_by_group`): no
    #: article is in two splits.
    article_split: tuple[float, float, float] | None = field(default=None)
    #: split -> file read when the split's own file is absent (e.g. an older release of the data).
    fallback_files: dict[str, str] | None = field(default=None)
    #: False: CSV/TSV files have no header row; columns are named by index ("0", "1", ...) unless
    #: ``fieldnames`` names them.
    header: bool = True

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not self.name:
            raise ConfigError("name: task name is empty")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind: unknown kind {self.kind!r}; known kinds are {list(KINDS)}")
        cols = (self.text_columns,) if isinstance(self.text_columns, str) else tuple(self.text_columns)
        if not 1 <= len(cols) <= 2 or not all(isinstance(c, str) and c for c in cols):
            raise ConfigError(f"{where}: text_columns: expected 1 or 2 column names, got {self.text_columns!r}")
        if self.kind == "qa" and len(cols) != 2:
            raise ConfigError(f"{where}: text_columns: QA needs (question, context) columns, got {cols!r}")
        object.__setattr__(self, "text_columns", cols)
        if self.kind != "qa" and not self.label_column:
            raise ConfigError(f"{where}: label_column: required for kind {self.kind!r}")
        if self.labels is not None:
            labels = tuple(str(lab) for lab in self.labels)
            if self.kind != "classification":
                raise ConfigError(f"{where}: labels: only classification tasks have labels")
            if len(set(labels)) != len(labels) or len(labels) < 2:
                raise ConfigError(f"{where}: labels: need at least 2 distinct labels, got {labels!r}")
            object.__setattr__(self, "labels", labels)
        if self.metric not in METRICS:
            raise ConfigError(f"{where}: metric: unknown metric {self.metric!r}; known are {sorted(METRICS)}")
        if not self.files:
            raise ConfigError(f"{where}: files: no splits given")
        object.__setattr__(self, "files", dict(self.files))
        if self.fmt is not None and self.fmt not in (*FORMATS, "hub"):
            raise ConfigError(f"{where}: fmt: unknown format {self.fmt!r}; known are {[*FORMATS, 'hub']}")
        if self.fieldnames is not None:
            object.__setattr__(self, "fieldnames", tuple(self.fieldnames))
        if self.dev_from_train is not None and "train" not in self.files:
            raise ConfigError(f"{where}: dev_from_train needs a 'train' file")
        if self.article_split is not None:
            fractions = tuple(float(f) for f in self.article_split)
            if set(self.files) != {"all"} or self.kind != "qa":
                raise ConfigError(f"{where}: article_split needs a QA task with one file under 'all'")
            if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
                raise ConfigError(f"{where}: article_split: expected 3 positive fractions summing to 1, "
                                  f"got {self.article_split!r}")
            object.__setattr__(self, "article_split", fractions)

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names this task provides."""
        if self.article_split is not None:
            return ARTICLE_SPLITS
        names = list(self.files)
        if self.dev_from_train is not None and "dev" not in names:
            names.insert(names.index("train") + 1, "dev")
        return tuple(names)

    @property
    def num_labels(self) -> int:
        """Number of model outputs: classes for classification, 1 for regression, 2 for QA (start/end)."""
        if self.kind == "classification":
            if self.labels is None:
                raise ConfigError(f"task {self.name!r}: labels: unknown label set")
            return len(self.labels)
        return 1 if self.kind == "regression" else 2

    @property
    def id2label(self) -> dict[int, str]:
        """Label id -> label name (empty for regression and QA)."""
        return dict(enumerate(self.labels or ()))

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> label id (empty for regression and QA)."""
        return {lab: i for i, lab in enumerate(self.labels or ())}


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS`; re-registering a different spec needs ``overwrite=True``."""
    if not isinstance(spec, TaskSpec):
        raise ConfigError(f"register_task: expected a TaskSpec, got {type(spec).__name__}")
    return TASKS.register(spec.name, spec, replace=overwrite)


def get_task(name: str) -> TaskSpec:
    """The registered task called ``name``."""
    return TASKS.get_or_raise(name, field="task")


def packaged_sample_dir() -> Path:
    """Directory of the small data files shipped inside the package."""
    return Path(__file__).resolve().parent / "sample"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The explicit ``data_dir``, else ``$ADAPTERKIT_DATA_DIR``, else None."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


# --- row -> example conversion ------------------------------------------------------------------


def label_key(value: Any) -> str:
    """Canonical string form of a label value as read from a file (1, 1.0 and "1" all give "1")."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"  # JSON spelling: the user's label names are kept
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sorted_labels(values: Iterable[str]) -> tuple[str, ...]:
    """Sort label names numerically when they are all integers, else alphabetically."""
    vals = set(values)
    try:
        return tuple(sorted(vals, key=int))
    except ValueError:
        return tuple(sorted(vals))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def header_looks_like_data(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True when the column names read from a header row look like a row of data: a name that is a
    number, a name with several words, or a name that also appears as a value in its own column."""
    names = [str(n) for n in rows[0]] if rows else []
    for name in names:
        if _is_number(name) or len(name.split()) >= 4:
            return True
        if any(str(row.get(name)) == name for row in rows[:1000]):
            return True
    return False


def _check_columns(path: object, rows: Sequence[Mapping[str, Any]], columns: Iterable[str]) -> None:
    if not rows:
        raise DataError(f"{path}: no data rows")
    present = list(rows[0])
    for col in columns:
        if col not in rows[0]:
            hint = ""
            if header_looks_like_data(rows):
                hint = ("; the first row looks like data, not a header: if the file has no header row, pass "
                        "--no-header (header: false) and name columns by index, e.g. --text-columns 0 --label-column 1")
            elif str(col).isdigit():
                hint = (f"; {col!r} is a column index, which works only for files without a header row "
                        "(--no-header); this file's first row names the columns")
            raise DataError(f"{path}: column {col!r} not found; columns are {present}{hint}")


def _text(path: object, i: int, row: Mapping[str, Any], col: str) -> str:
    """A text cell: a non-empty string without NUL bytes; a number is taken as its text, a float NaN
    (a missing value in Parquet/JSON) or an empty cell is an error naming the file, row and column."""
    try:
        value = row[col]
    except KeyError:
        raise DataError(f"{path}: row {i}: column {col!r} missing; row has {list(row)}") from None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise DataError(f"{path}: row {i}: column {col!r} is empty (a missing value: {value!r})")
    if isinstance(value, (Mapping, list, tuple, bytes)):
        raise DataError(f"{path}: row {i}: column {col!r}: expected text, got {type(value).__name__} {value!r:.60}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise DataError(f"{path}: row {i}: column {col!r} is empty (text {text!r})")
    if "\x00" in text:
        raise DataError(f"{path}: row {i}: column {col!r} contains a NUL byte (binary data, or a broken export?)")
    return text


def _label_value(path: object, i: int, row: Mapping[str, Any], col: str) -> Any:
    try:
        value = row[col]
    except KeyError:
        raise DataError(f"{path}: row {i}: column {col!r} missing; row has {list(row)}") from None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}: row {i}: column {col!r} is empty")
    if _is_nan(value):
        raise DataError(f"{path}: row {i}: column {col!r}: label {value!r} is NaN (a missing value)")
    return value


def _is_nan(value: Any) -> bool:
    """True for a float NaN and for the strings nan/NaN (how pandas and numpy write a missing value)."""
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("nan", "-nan", "+nan")


def _class_label_key(path: object, i: int, col: str, value: Any) -> str:
    """The label name of a classification row; a non-integer number (1.5) or infinity is an error."""
    key = label_key(value)
    number = _as_number(key)
    if number is not None and (not math.isfinite(number) or not number.is_integer()):
        raise DataError(
            f"{path}: row {i}: column {col!r}: label {value!r} is not a class (not an integer); "
            "for a real-valued target use --kind regression"
        )
    if number is not None and key != str(int(number)):
        key = str(int(number))  # "1.0", " 1" -> "1"
    return key


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_label_spellings(path: object, keys: Sequence[str]) -> None:
    """Refuse a file whose labels mix numbers and names (0/1 and neg/pos): that would become 4 classes."""
    numeric = sorted({k for k in keys if _as_number(k) is not None})
    named = sorted({k for k in keys if _as_number(k) is None})
    if numeric and named:
        raise DataError(
            f"{path}: label column mixes numeric labels {numeric[:5]} and named labels {named[:5]}; use one "
            "spelling throughout (or pass --labels in id order)"
        )


def _answers(path: object, i: int, value: Any, context: str | None = None) -> dict[str, list[Any]]:
    """Normalise answers to ``{"text": [...], "answer_start": [...]}``, dropping empty answer texts.

    Each kept answer's ``answer_start`` must be an integer within the context at which the context
    reads the answer text; anything else is an error naming the file, row and field.
    """
    where = f"{path}: row {i}: column 'answers'"
    if isinstance(value, Mapping):
        texts, starts = value.get("text", []), value.get("answer_start", [])
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise DataError(f"{where}: 'text' and 'answer_start' must be lists, got {texts!r} and {starts!r}")
    elif isinstance(value, list):
        if not all(isinstance(a, Mapping) for a in value):
            bad = next(a for a in value if not isinstance(a, Mapping))
            raise DataError(f"{where}: expected a list of {{'text', 'answer_start'}} objects, found {bad!r}")
        texts = [a.get("text") for a in value]
        starts = [a.get("answer_start") for a in value]
    else:
        raise DataError(f"{where}: expected a dict or list, got {value!r}")
    if len(texts) != len(starts):
        raise DataError(f"{where}: {len(texts)} texts but {len(starts)} starts")
    keep: list[tuple[str, int]] = []
    for j, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: text[{j}]: expected a string, got {text!r}")
        if not text:
            continue
        if isinstance(start, bool) or not isinstance(start, (int, float, str)):
            raise DataError(f"{where}: answer_start[{j}]: expected an integer, got {start!r}")
        try:
            number = float(start)
        except ValueError:
            raise DataError(f"{where}: answer_start[{j}]: expected an integer, got {start!r}") from None
        if not math.isfinite(number) or not number.is_integer():
            raise DataError(f"{where}: answer_start[{j}]: expected an integer, got {start!r}")
        pos = int(number)
        if context is not None:
            if pos < 0 or pos + len(text) > len(context):
                raise DataError(
                    f"{where}: answer_start[{j}]: {pos} puts the answer {text!r} outside the context "
                    f"({len(context)} characters)"
                )
            if context[pos : pos + len(text)] != text:
                raise DataError(
                    f"{where}: answer_start[{j}]: the context at {pos} reads {context[pos : pos + len(text)]!r}, "
                    f"not the answer text {text!r}"
                )
        keep.append((text, pos))
    return {"text": [t for t, _ in keep], "answer_start": [s for _, s in keep]}


_MISSING_MARKERS = ("nan", "null", "none", "n/a", "na")


def _warn_missing_markers(source: object, examples: Sequence[Example], fields: Sequence[str]) -> None:
    """Texts that read like a missing-value marker (``NaN`` from pandas, ``null``) are kept as text, with a
    warning on stderr naming the file, the column and the first rows, so that the decision is visible."""
    for field_name in fields:
        rows = [i for i, ex in enumerate(examples, start=1)
                if isinstance(ex.get(field_name), str) and ex[field_name].strip().lower() in _MISSING_MARKERS]
        if rows:
            text = examples[rows[0] - 1][field_name]
            print(f"warning: {source}: {field_name}: {len(rows)} row(s) (first: row {rows[0]}) have the text "
                  f"{text!r}, which often marks a missing value; kept as text", file=sys.stderr, flush=True)


def rows_to_examples(spec: TaskSpec, rows: Sequence[Mapping[str, Any]], source: object, *,
                     labelled: bool = True) -> list[Example]:
    """Convert raw file rows to examples of ``spec.kind``; ``source`` names the file in errors.

    ``labelled=False`` reads inputs to predict on: no label column is needed (classification and
    regression examples have no ``label``; QA rows need no ``answers``, and without an ``id``
    column the row number is the id).

    Refused with a DataError naming the file, row and column: empty or NaN texts, NUL bytes, NaN or
    infinite labels, non-integer class labels (1.5), and QA answers whose ``answer_start`` does not
    point at the answer text. Texts such as ``NaN`` or ``null`` are kept, with a warning.
    """
    examples = _rows_to_examples(spec, rows, source, labelled)
    _warn_missing_markers(source, examples, ("question", "context") if spec.kind == "qa" else ("text", "text_pair"))
    return examples


def _rows_to_examples(spec: TaskSpec, rows: Sequence[Mapping[str, Any]], source: object,
                      labelled: bool = True) -> list[Example]:
    cols = spec.text_columns
    if spec.kind == "qa":
        q_col, c_col = cols
        _check_columns(source, rows, ("id", q_col, c_col, "answers") if labelled else (q_col, c_col))
        qa_out = []
        for i, row in enumerate(rows, start=1):
            context = _text(source, i, row, c_col)
            answers = row.get("answers")
            example = {
                "id": _text(source, i, row, "id") if labelled or "id" in row else str(i),
                "question": _text(source, i, row, q_col),
                "context": context,
                "answers": _answers(source, i, answers, context) if labelled or answers
                else {"text": [], "answer_start": []},
            }
            if row.get("title") is not None:
                example["title"] = str(row["title"])  # the SQuAD article, for splits by article
            qa_out.append(example)
        return qa_out
    assert spec.label_column is not None
    lab_col = spec.label_column
    pair_col = cols[1] if len(cols) == 2 else None
    if not labelled:
        _check_columns(source, rows, cols)
        return [{"text": _text(source, i, row, cols[0]), "text_pair": _text(source, i, row, pair_col) if pair_col
                 else None} for i, row in enumerate(rows, start=1)]
    _check_columns(source, rows, (*cols, lab_col))
    index = spec.label2id
    out: list[Example] = []
    for i, row in enumerate(rows, start=1):
        raw = _label_value(source, i, row, lab_col)
        label: int | float
        if spec.kind == "regression":
            try:
                label = float(raw)
            except (TypeError, ValueError):
                raise DataError(
                    f"{source}: row {i}: column {lab_col!r}: {raw!r} is not a number"
                ) from None
            if not math.isfinite(label):
                raise DataError(f"{source}: row {i}: column {lab_col!r}: {raw!r} is not a finite number")
        elif index:
            key = label_key(raw)
            if key not in index and _as_number(key) is not None:
                key = _class_label_key(source, i, lab_col, raw)
            if key not in index and isinstance(raw, bool) and str(int(raw)) in index:
                key = str(int(raw))  # true/false in a task whose labels are 0/1
            if key not in index:
                raise DataError(
                    f"{source}: row {i}: column {lab_col!r}: label {raw!r} is not one of the task's "
                    f"labels {list(index)}"
                )
            label = index[key]
        else:
            try:
                label = int(raw) if isinstance(raw, bool) else int(_class_label_key(source, i, lab_col, raw))
            except ValueError:
                raise DataError(
                    f"{source}: row {i}: column {lab_col!r}: label {raw!r} is not an id and the task "
                    "has no label names"
                ) from None
        out.append(
            {
                "text": _text(source, i, row, cols[0]),
                "text_pair": _text(source, i, row, pair_col) if pair_col else None,
                "label": label,
            }
        )
    return out


# --- loading ------------------------------------------------------------------------------------


def task_file(spec: TaskSpec, split: str, data_dir: str | Path | None = None) -> Path:
    """The file that split ``split`` of ``spec`` is read from (DataError when it does not exist)."""
    key = "all" if spec.article_split is not None else split
    try:
        return _file_path(spec, key, data_dir)
    except DataError:
        fallback = (spec.fallback_files or {}).get(key)
        if fallback is None:
            raise
        try:
            return _file_path(spec, key, data_dir, fallback)
        except DataError:
            raise DataError(f"{_file_path_text(spec, key, data_dir)}: file not found (task {spec.name!r}, split "
                            f"{split!r}; nor its fallback {fallback})") from None


def _file_path_text(spec: TaskSpec, key: str, data_dir: str | Path | None) -> str:
    base = resolve_data_dir(data_dir)
    rel = Path(spec.files[key]).expanduser()
    return str(rel if rel.is_absolute() or base is None else base / rel)


def _file_path(spec: TaskSpec, split: str, data_dir: str | Path | None, file: str | None = None) -> Path:
    rel = Path(file or spec.files[split]).expanduser()
    if rel.is_absolute():
        path = rel
    else:
        base = resolve_data_dir(data_dir)
        if base is None:
            raise DataError(
                f"{rel}: task {spec.name!r} split {split!r}: relative path and no data directory; "
                f"pass data_dir (--data-dir) or set {DATA_DIR_ENV}"
                + (f"; with internet, its Hub data set is {spec.hub[0]}" + (f":{spec.hub[1]}" if spec.hub[1] else "")
                   + " (--hub-dataset)" if spec.hub else "")
            )
        path = base / rel
    if not path.is_file():
        raise DataError(f"{path}: file not found (task {spec.name!r}, split {split!r})")
    return path


def read_rows(path: str | Path, fmt: str | None = None, fieldnames: Sequence[str] | None = None,
              header: bool = True) -> list[Mapping[str, Any]]:
    """Rows of a data file; ``header=False`` reads a headerless CSV/TSV (columns named by index)."""
    if not header:
        fmt = fmt or detect_format(path)
        fmt = {"tsv": "tsv_noheader", "csv": "csv_noheader"}.get(fmt, fmt)
        if fmt not in ("tsv_noheader", "csv_noheader"):
            raise ConfigError(f"{path}: no_header: only CSV and TSV files can be read without a header row "
                              f"(this file is {fmt})")
    return read_table(path, fmt=fmt, fieldnames=fieldnames)


def load_inputs(spec: TaskSpec, path: str | Path) -> list[Example]:
    """Examples to predict on from ``path`` (read like ``spec``'s files); labels are not needed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    fmt = spec.fmt if spec.fmt not in (None, "hub") else None
    if fmt is None and spec.kind == "qa" and path.suffix.lower() == ".json":
        fmt = "squad"
    return rows_to_examples(spec, read_rows(path, fmt, spec.fieldnames, spec.header), path, labelled=False)


def _read_split_file(spec: TaskSpec, split: str, data_dir: str | Path | None) -> list[Example]:
    path = task_file(spec, split, data_dir)
    rows = read_rows(path, spec.fmt, spec.fieldnames, spec.header)
    examples = rows_to_examples(spec, rows, path)
    if spec.article_split is not None:
        from adapterkit.data.sampling import split_by_group

        parts = split_by_group(examples, spec.article_split, ARTICLE_SPLIT_SEED, "title")
        examples = parts[ARTICLE_SPLITS.index(split)]
    return examples


def load_split(spec: TaskSpec | str, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """Load one split of a task as a list of examples."""
    spec = get_task(spec) if isinstance(spec, str) else spec
    if split not in spec.splits:
        raise ConfigError(f"task {spec.name!r}: split: unknown split {split!r}; splits are {list(spec.splits)}")
    if spec.fmt == "hub":
        return _load_hub_split(spec, split)
    if spec.dev_from_train is not None and "dev" not in spec.files and split in ("train", "dev"):
        train, dev = carve_dev(_read_split_file(spec, "train", data_dir), spec.dev_from_train, CARVE_SEED)
        return train if split == "train" else dev
    return _read_split_file(spec, split, data_dir)


def load_task(
    name_or_spec: str | TaskSpec,
    data_dir: str | Path | None = None,
    splits: Iterable[str] | None = None,
) -> dict[str, list[Example]]:
    """Load the requested splits (default: all) of a task: ``{split: examples}``."""
    spec = get_task(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    wanted = list(spec.splits if splits is None else ([splits] if isinstance(splits, str) else splits))
    if spec.dev_from_train is not None and "dev" not in spec.files and {"train", "dev"} <= set(wanted):
        train, dev = carve_dev(_read_split_file(spec, "train", data_dir), spec.dev_from_train, CARVE_SEED)
        carved = {"train": train, "dev": dev}
        return {s: carved[s] if s in carved else load_split(spec, s, data_dir) for s in wanted}
    return {s: load_split(spec, s, data_dir) for s in wanted}


# --- user tasks -------------------------------------------------------------------------------


def _as_columns(text_columns: Sequence[str] | str | None, kind: str) -> tuple[str, ...]:
    if text_columns is None:
        return ("question", "context") if kind == "qa" else ("text",)
    cols = (text_columns,) if isinstance(text_columns, (str, int)) else tuple(text_columns)
    # column indices of headerless files may come as numbers from YAML
    return tuple(str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in cols)


def task_from_file(
    name: str,
    train: str | Path | None,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    text_columns: Sequence[str] | str | None = None,
    label_column: str | None = "label",
    labels: Sequence[str] | None = None,
    kind: str = "classification",
    metric: str | None = None,
    fmt: str | None = None,
    fieldnames: Sequence[str] | None = None,
    base_dir: str | Path | None = None,
    header: bool = True,
) -> TaskSpec:
    """A TaskSpec for a user's own CSV/TSV/JSONL/Parquet (or SQuAD v1.1 JSON, for ``kind="qa"``) files.

    Every file given becomes the split it is given as; ``train`` may be None (e.g. to evaluate a test
    file). Relative paths are resolved against ``base_dir`` (default: the current directory) and
    stored absolute. ``text_columns`` defaults to ``("text",)`` (QA: ``("question", "context")``).
    ``header=False`` reads headerless CSV/TSV files whose columns are named by index (``"0"``,
    ``"1"``, ...). For classification without ``labels`` the label set is read from the train file
    (else the first file given) and sorted (numerically when every label is an integer).
    """
    if kind not in KINDS:
        raise ConfigError(f"task {name!r}: kind: unknown kind {kind!r}; known kinds are {list(KINDS)}")
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        label_column = str(label_column)  # a column index of a headerless file, from YAML
    base = Path(base_dir).expanduser() if base_dir is not None else Path.cwd()
    files: dict[str, str] = {}
    for split, value in (("train", train), ("dev", dev), ("test", test)):
        if value is None:
            continue
        path = Path(value).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        if not path.is_file():
            raise DataError(f"{path}: file not found (task {name!r}, split {split!r})")
        files[split] = str(path)
    if not files:
        raise ConfigError(f"task {name!r}: train: give at least one file (train, dev or test)")
    first = next(iter(files.values()))
    cols = _as_columns(text_columns, kind)
    if kind == "qa":
        label_column = None
        if fmt is None and all(Path(f).suffix.lower() == ".json" for f in files.values()):
            fmt = "squad"  # SQuAD v1.1 JSON; other layouts (JSON lines with an 'answers' column) keep sniffing
    elif kind == "classification" and labels is None:
        if not label_column:
            raise ConfigError(f"task {name!r}: label_column: required for kind {kind!r}")
        rows = read_rows(first, fmt, fieldnames, header)
        _check_columns(first, rows, (*cols, label_column))
        keys = [_class_label_key(first, i, label_column, _label_value(first, i, row, label_column))
                for i, row in enumerate(rows, 1)]
        _check_label_spellings(first, keys)
        labels = _sorted_labels(keys)
    return TaskSpec(
        name=name,
        kind=kind,
        text_columns=cols,
        label_column=label_column,
        labels=tuple(labels) if labels is not None and kind == "classification" else None,
        metric=metric or _DEFAULT_METRIC[kind],
        files=files,
        fmt=fmt,
        fieldnames=tuple(fieldnames) if fieldnames else None,
        description=f"user task from {first}",
        header=header,
    )


_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def task_from_hub(
    dataset: str,
    config: str | None = None,
    text_columns: Sequence[str] | str | None = None,
    label_column: str | None = "label",
    *,
    name: str | None = None,
    kind: str = "classification",
    labels: Sequence[str] | None = None,
    metric: str | None = None,
    splits: Mapping[str, str] | None = None,
) -> TaskSpec:
    """A TaskSpec backed by a Hugging Face Hub data set (needs internet or a warm ``datasets`` cache).

    ``splits`` maps our split names to the Hub's (default train/validation/test). Examples are
    built with ``datasets.load_dataset`` when a split is loaded. ``labels`` are the values as they
    appear in the data (e.g. ``("0", "1")``) or the ClassLabel names; left out, integer labels are
    taken as ids.
    """
    if not dataset or not isinstance(dataset, str):
        raise ConfigError(f"dataset: expected a Hub data set name, got {dataset!r}")
    if kind not in KINDS:
        raise ConfigError(f"kind: unknown kind {kind!r}; known kinds are {list(KINDS)}")
    task_name = name or (f"{dataset}/{config}" if config else dataset)
    return TaskSpec(
        name=task_name,
        kind=kind,
        text_columns=_as_columns(text_columns, kind),
        label_column=None if kind == "qa" else label_column,
        labels=tuple(labels) if labels is not None else None,
        metric=metric or _DEFAULT_METRIC[kind],
        files=dict(splits or _HUB_SPLITS),
        fmt="hub",
        hub=(dataset, config),
        description=f"Hugging Face Hub data set {dataset}" + (f" ({config})" if config else ""),
    )


def _load_hub_split(spec: TaskSpec, split: str) -> list[Example]:
    """Load one split of a Hub-backed task with ``datasets.load_dataset``."""
    if spec.hub is None:
        raise ConfigError(f"task {spec.name!r}: hub: fmt 'hub' needs hub=(dataset, config)")
    dataset, config = spec.hub
    source = f"hub:{dataset}" + (f"/{config}" if config else "") + f"[{spec.files[split]}]"
    try:
        import datasets

        ds = datasets.load_dataset(dataset, config, split=spec.files[split])
    except Exception as exc:  # network, missing data set, bad config: all reported the same way
        raise DataError(f"{source}: cannot load split {split!r} of task {spec.name!r} ({exc})") from exc
    rows = ds.to_list()
    feature = getattr(ds, "features", {}).get(spec.label_column) if spec.label_column else None
    names = getattr(feature, "names", None)
    if names and spec.labels and not set(spec.labels) & {str(i) for i in range(len(names))}:
        # ClassLabel ids in the data, label names in the spec: map ids to names first.
        rows = [{**r, spec.label_column: names[r[spec.label_column]]} for r in rows]
    return rows_to_examples(spec, rows, source)


_CONFIG_KEYS = {
    "name", "train", "dev", "test", "text_columns", "label_column", "labels", "kind", "metric", "fmt",
    "fieldnames", "hub", "splits", "header",
}


def load_task_from_config(config: Mapping[str, Any], base_dir: str | Path | None = None) -> TaskSpec:
    """A TaskSpec from a small config mapping (e.g. a YAML ``task:`` block).

    ``{name}`` alone names a registered task. ``{name, train, dev, test, text_columns, label_column,
    labels, kind, metric, fmt}`` describes files (see :func:`task_from_file`); ``hub: [dataset,
    config]`` instead of ``train`` describes a Hub data set.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"task: expected a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"task: unknown keys {unknown}; allowed keys are {sorted(_CONFIG_KEYS)}")
    name = config.get("name")
    if "train" not in config and "hub" not in config:
        if not name:
            raise ConfigError("task: name: give a registered task name, or 'train' files, or 'hub'")
        if set(config) != {"name"}:
            raise ConfigError(f"task {name!r}: train: required when describing files ({sorted(config)} given)")
        return get_task(name)
    kind = config.get("kind", "classification")
    if "hub" in config:
        hub = config["hub"]
        if isinstance(hub, str):
            hub = (hub, None)
        if not isinstance(hub, (list, tuple)) or not 1 <= len(hub) <= 2:
            raise ConfigError(f"task: hub: expected [dataset, config], got {hub!r}")
        return task_from_hub(
            hub[0],
            hub[1] if len(hub) > 1 else None,
            config.get("text_columns"),
            config.get("label_column", "label"),
            name=name,
            kind=kind,
            labels=config.get("labels"),
            metric=config.get("metric"),
            splits=config.get("splits"),
        )
    if not name:
        raise ConfigError("task: name: required")
    return task_from_file(
        name,
        config["train"],
        dev=config.get("dev"),
        test=config.get("test"),
        text_columns=config.get("text_columns"),
        label_column=config.get("label_column", "label"),
        labels=config.get("labels"),
        kind=kind,
        metric=config.get("metric"),
        fmt=config.get("fmt"),
        fieldnames=config.get("fieldnames"),
        base_dir=base_dir,
        header=bool(config.get("header", True)),
    )


# --- the registered tasks --------------------------------------------------------------------------

_CHEMPROT_LABELS = (
    "ACTIVATOR", "AGONIST", "AGONIST-ACTIVATOR", "AGONIST-INHIBITOR", "ANTAGONIST", "DOWNREGULATOR",
    "INDIRECT-DOWNREGULATOR", "INDIRECT-UPREGULATOR", "INHIBITOR", "PRODUCT-OF", "SUBSTRATE",
    "SUBSTRATE_PRODUCT-OF", "UPREGULATOR",
)
_CITATION_LABELS = ("Background", "CompareOrContrast", "Extends", "Future", "Motivation", "Uses")
_XNLI_LANGS = ("en", "de", "fr", "es", "zh", "ru")


def _builtin_tasks() -> list[TaskSpec]:
    specs = [
        TaskSpec(
            "sst2", "classification", ("sentence",), "label", ("0", "1"), "accuracy",
            {"train": "glue/sst2/train.tsv", "dev": "glue/sst2/dev.tsv"},
            hub=("nyu-mll/glue", "sst2"), description="GLUE SST-2 sentiment (0 negative, 1 positive)",
        ),
        TaskSpec(
            "cola", "classification", ("x",), "y", ("0", "1"), "matthews",
            {"train": "glue/cola/train.tsv", "dev": "glue/cola/dev.tsv"},
            hub=("nyu-mll/glue", "cola"), description="GLUE CoLA acceptability (0 unacceptable, 1 acceptable)",
        ),
        TaskSpec(
            "mrpc", "classification", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1",
            {"train": "glue/mrpc/train.tsv", "dev": "glue/mrpc/dev.tsv",
             "test": "glue/mrpc/msr_paraphrase_test.txt"},
            fmt="tsv", hub=("nyu-mll/glue", "mrpc"),
            description="GLUE MRPC paraphrase (1 paraphrase); test = labelled Microsoft release",
        ),
        TaskSpec(
            "stsb", "regression", ("sentence1", "sentence2"), "score", None, "spearman",
            {"train": "glue/stsb/train.tsv", "dev": "glue/stsb/dev.tsv"},
            hub=("nyu-mll/glue", "stsb"), description="GLUE STS-B similarity, float 0-5",
        ),
        TaskSpec(
            "rte", "classification", ("sentence1", "sentence2"), "label", ("0", "1"), "accuracy",
            {"train": "glue/rte/train.parquet", "dev": "glue/rte/validation.parquet"},
            hub=("nyu-mll/glue", "rte"), description="GLUE RTE entailment (0 entailment, 1 not_entailment)",
        ),
        TaskSpec(
            "qnli", "classification", ("question", "sentence"), "label", ("entailment", "not_entailment"),
            "accuracy", {"dev": "glue/qnli/dev.tsv"},
            hub=("nyu-mll/glue", "qnli"), description="GLUE QNLI (dev only here)",
        ),
        TaskSpec(
            "chemprot", "classification", ("text",), "label", _CHEMPROT_LABELS, "micro_f1",
            {s: f"domain/chemprot/{s}.txt" for s in ("train", "dev", "test")},
            fmt="jsonl", description="ChemProt relation classification (DAPT/TAPT data), 13 labels",
        ),
        TaskSpec(
            "citation_intent", "classification", ("text",), "label", _CITATION_LABELS, "macro_f1",
            {s: f"domain/citation_intent/{s}.txt" for s in ("train", "dev", "test")},
            fmt="jsonl", description="ACL-ARC citation intent (DAPT/TAPT data), 6 labels",
        ),
    ]
    for lang in _XNLI_LANGS:
        specs.append(
            TaskSpec(
                f"xnli_{lang}", "classification", ("premise", "hypothesis"), "label",
                ("entailment", "neutral", "contradiction"), "accuracy",
                {"dev": f"xtreme/xnli/dev-{lang}.tsv"}, fmt="tsv_noheader",
                fieldnames=("premise", "hypothesis", "label"), hub=("facebook/xnli", lang),
                description=f"XNLI dev ({lang}), XTREME format, no train split",
            )
        )
    for lang in ("en", "de"):
        with_answers, xtreme = f"qa/xquad/xquad.{lang}.json", f"xtreme/xquad/xquad.{lang}.json"
        specs += [
            TaskSpec(
                f"xquad_{lang}", "qa", ("question", "context"), None, None, "squad_f1", {"test": with_answers},
                fmt="squad", hub=("google/xquad", f"xquad.{lang}"), fallback_files={"test": xtreme},
                description=f"XQuAD ({lang}) with answers, 1190 questions (all 48 articles) as test; where "
                f"{with_answers} is absent, the blank-answer XTREME copy {xtreme} (predictions only)",
            ),
            TaskSpec(
                f"xquad_{lang}_split", "qa", ("question", "context"), None, None, "squad_f1", {"all": with_answers},
                fmt="squad", article_split=XQUAD_ARTICLE_SPLIT,
                description=f"XQuAD ({lang}) with answers split by article 32/8/8 (seed {ARTICLE_SPLIT_SEED}) into "
                "train/dev/test; the same articles in every language",
            ),
            TaskSpec(
                f"xquad_{lang}_xtreme", "qa", ("question", "context"), None, None, "squad_f1", {"test": xtreme},
                fmt="squad", description=f"XQuAD ({lang}), the XTREME release: answer texts blank, so it can be "
                "predicted on but not scored",
            ),
        ]
    specs.append(
        TaskSpec(
            "sample_sentiment", "classification", ("sentence",), "label", ("0", "1"), "accuracy",
            {"train": str(packaged_sample_dir() / "sentiment.tsv")}, fmt="tsv", dev_from_train=40,
            description="120 short original movie-review sentences shipped with adapterkit "
            "(0 negative, 1 positive); dev = 40 carved from them",
        )
    )
    return specs


for _spec in _builtin_tasks():
    register_task(_spec)
del _spec
