"""The filter language of `--where`, the HTTP API's `filter` and `Searcher(..., where=...)`.

A filter is terms joined by `and` (or given as a list, e.g. repeated `--where` flags); a row
matches when every term does. A term is `<field><op><value>`:

    label=Sneaker              equal (strings compare exactly, numbers as numbers)
    label=Sneaker,Sandal       any of the listed values (a comma-separated list)
    label!=Bag                 none of the listed values
    width>=64   height<100     order comparisons, numeric fields only (<, <=, >, >=)
    path~*/holiday/*.jpg       glob match (fnmatch: * ? [..]), string fields only

Values may be double-quoted to hold commas, spaces or the word `and`: `label="T-shirt/top"`.
The fields are the index's metadata columns (`lookalike.stages.index.metadata`): row, label,
path, split, width, height, sha256 and the dataset's `metadata_columns`. Parsing knows no
fields; `check_fields` checks a parsed filter against the columns an index has.

Torch- and FAISS-free: a bad filter is refused before anything heavy loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lookalike.core.errors import LookalikeError, brief

OPERATORS = ("<=", ">=", "!=", "=", "<", ">", "~")  # longest first: `<=` before `<`
ORDERED = frozenset({"<", "<=", ">", ">="})
_FIELD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(<=|>=|!=|=|<|>|~)\s*")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
SYNTAX = "terms like label=Sneaker, label=Sneaker,Sandal, width>=64 or path~*/cats/*, joined by 'and'"


class FilterError(LookalikeError, ValueError):
    """A filter that cannot be read or does not fit the index; the message says how to write it."""


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    values: tuple[str, ...]  # as written; typed against the column when evaluated

    def __str__(self) -> str:
        return f"{self.field}{self.op}{','.join(_quoted(v) for v in self.values)}"


@dataclass(frozen=True)
class Filter:
    terms: tuple[Term, ...]

    @property
    def fields(self) -> list[str]:
        return sorted({t.field for t in self.terms})

    def __str__(self) -> str:
        return " and ".join(map(str, self.terms))

    def __bool__(self) -> bool:
        return bool(self.terms)


def parse_filter(where: str | Iterable[str] | None) -> Filter:
    """A `Filter` from one expression or a list of them (all must hold); empty for None.

    Raises:
        FilterError: a term without a field, operator or value, an unclosed quote, or an
            order comparison (or glob) given several values.
    """
    if where is None:
        return Filter(())
    texts = [where] if isinstance(where, str) else list(where)
    terms: list[Term] = []
    for text in texts:
        if not isinstance(text, str):
            raise FilterError(f"filter terms must be strings, got {brief(text)}; write {SYNTAX}")
        for part in _split_and(text):
            terms.append(_term(part))
    return Filter(tuple(terms))


def check_fields(filter_: Filter, columns: Iterable[str]) -> None:
    """Refuse a filter naming a field the index does not have, listing those it has."""
    known = list(columns)
    unknown = [f for f in filter_.fields if f not in known]
    if unknown:
        raise FilterError(
            f"unknown filter field {', '.join(map(repr, unknown))}: this index has {', '.join(known)} "
            "(more columns are stored with dataset.metadata_columns)"
        )


def _split_and(text: str) -> list[str]:
    """`text` cut at ` and ` outside double quotes."""
    parts, start, quoted = [], 0, False
    i = 0
    while i < len(text):
        if text[i] == '"':
            quoted = not quoted
        elif not quoted:
            match = _AND.match(text, i)
            if match and i > 0 and text[i].isspace():
                parts.append(text[start:i])
                start = i = match.end()
                continue
        i += 1
    if quoted:
        raise FilterError(f"unclosed double quote in filter {brief(text)}")
    parts.append(text[start:])
    if not any(p.strip() for p in parts):
        raise FilterError(f"empty filter {brief(text)}; write {SYNTAX}")
    return parts


def _term(text: str) -> Term:
    match = _FIELD.match(text)
    if not match:
        raise FilterError(f"cannot read filter term {brief(text.strip())}: write {SYNTAX}")
    field, op = match.group(1), match.group(2)
    values = _values(text[match.end() :].strip(), text)
    if op in ORDERED or op == "~":
        if len(values) != 1:
            raise FilterError(f"filter term {brief(text.strip())}: {op} takes one value, got {len(values)}")
    return Term(field, op, tuple(values))


def _values(rest: str, text: str) -> list[str]:
    """Comma-separated values; a double-quoted value keeps its commas and spaces."""
    values, current, quoted, was_quoted = [], "", False, False

    def close() -> None:
        value = current if was_quoted else current.strip()
        if value == "" and not was_quoted:
            raise FilterError(f"filter term {brief(text.strip())} has an empty value; quote it (\"\") to match ''")
        values.append(value)

    for char in rest:
        if char == '"':
            quoted, was_quoted = not quoted, True
        elif char == "," and not quoted:
            close()
            current, was_quoted = "", False
        else:
            current += char
    close()
    return values


def _quoted(value: str) -> str:
    return f'"{value}"' if value == "" or any(c in value for c in ', "') else value
