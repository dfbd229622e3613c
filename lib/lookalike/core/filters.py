"""The filter language of `--where`, the HTTP API's `filter` and `Searcher(..., where=...)`.

A filter is terms joined by `and` and `or` (`and` binds first; parentheses group), or a list of
filters that must all hold (repeated `--where` flags, a JSON list). A term is `<field><op><value>`:

    label=Sneaker              equal (strings compare exactly, numbers as numbers)
    label=Sneaker,Sandal       any of the listed values (a comma-separated list)
    label!=Bag                 none of the listed values
    width>=64   height<100     order comparisons, numeric fields only (<, <=, >, >=)
    path~*/holiday/*.jpg       glob match (fnmatch: * ? [..]), string fields only

    label=Sneaker or (label=Bag and width>=64)

A value in double or single quotes holds anything but its own quote: commas, parentheses, the
words `and`/`or` (`label="T-shirt/top"`, `label='Rock and Roll'`). Unquoted, a value ends at a
comma, a parenthesis, or a word `and`/`or`; spaces between its words are kept (`label=Ankle boot`).
Anything else (a dangling `and`, an unclosed quote or parenthesis, `not`) is refused in one line,
never read as something else. A filter holds at most `MAX_FILTER_CHARS` characters and
`MAX_FILTER_TERMS` terms, and is read in one pass (time linear in its length).

The fields are the index's metadata columns (`lookalike.stages.index.metadata`): row, label,
path, split, width, height, sha256 and the dataset's `metadata_columns`. Parsing knows no
fields; `check_fields` checks a parsed filter against the columns an index has.

Torch- and FAISS-free: a bad filter is refused before anything heavy loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn, Union

from lookalike.core.errors import LookalikeError, brief

OPERATORS = ("<=", ">=", "!=", "=", "<", ">", "~")  # longest first: `<=` before `<`
ORDERED = frozenset({"<", "<=", ">", ">="})
MAX_FILTER_CHARS = 10_000  # a long list of labels fits; a pasted file does not
MAX_FILTER_TERMS = 100
MAX_FILTER_DEPTH = 16  # nested parentheses
SYNTAX = "terms like label=Sneaker,Sandal, width>=64, path~*/cats/*, joined by and / or (parentheses group)"

_SPACE = re.compile(r"\s*")
_FIELD_OP = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)\s*(<=|>=|!=|=|<|>|~)\s*")
_KEYWORD = re.compile(r"(and|or)(?=[\s()]|\Z)", re.IGNORECASE)
_NOT = re.compile(r"not(?=[\s(]|\Z)", re.IGNORECASE)
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")
_WORD = re.compile(r"[^\s,()\"']+")
_TOKEN = re.compile(r"[^\s()]+|.")  # what an error message quotes
_LOOKS_LIKE_TERM = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\s*(<=|>=|!=|=|<|>|~)")


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
class AllOf:
    """Every part holds (`and`)."""

    parts: tuple[Node, ...]

    def __str__(self) -> str:
        return " and ".join(f"({p})" if isinstance(p, AnyOf) else str(p) for p in self.parts)


@dataclass(frozen=True)
class AnyOf:
    """At least one part holds (`or`)."""

    parts: tuple[Node, ...]

    def __str__(self) -> str:
        return " or ".join(map(str, self.parts))


Node = Union[Term, AllOf, AnyOf]


@dataclass(frozen=True)
class Filter:
    """A parsed filter: a tree of terms (None: no filter, every row). Hashable, so results can be
    cached by it; `str()` writes it back in the filter language."""

    root: Node | None = None

    @property
    def terms(self) -> tuple[Term, ...]:
        found, todo = [], [self.root] if self.root is not None else []
        while todo:
            node = todo.pop()
            if isinstance(node, Term):
                found.append(node)
            else:
                todo.extend(reversed(node.parts))
        return tuple(found)

    @property
    def fields(self) -> list[str]:
        return sorted({t.field for t in self.terms})

    def __str__(self) -> str:
        return "" if self.root is None else str(self.root)

    def __bool__(self) -> bool:
        return self.root is not None


def parse_filter(where: str | Iterable[str] | None) -> Filter:
    """A `Filter` from one expression or a list of them (all must hold); empty for None.

    Raises:
        FilterError: anything that is not a whole filter (a dangling `and`/`or`, an unclosed quote or
            parenthesis, a term without a field, operator or value, an order comparison or glob given
            several values), or one longer than `MAX_FILTER_CHARS` or `MAX_FILTER_TERMS` terms.
    """
    if where is None:
        return Filter()
    if isinstance(where, str):
        texts = [where]
    elif isinstance(where, Iterable) and not isinstance(where, (bytes, bytearray, dict)):
        texts = list(where)
    else:
        raise FilterError(f"a filter is a string or a list of strings, not {brief(where)}; write {SYNTAX}")
    size = 0
    for text in texts:
        if not isinstance(text, str):
            raise FilterError(f"filter terms must be strings, got {brief(text)}; write {SYNTAX}")
        size += len(text)
    if size > MAX_FILTER_CHARS:
        raise FilterError(
            f"filter is {size:,} characters, over the {MAX_FILTER_CHARS:,} allowed; "
            "filter on fewer values (or on a metadata column that groups them)"
        )
    parser = _Parser()
    parts = [parser.parse(text) for text in texts]
    if not parts:
        return Filter()
    return Filter(parts[0] if len(parts) == 1 else _joined(AllOf, parts))


def check_fields(filter_: Filter, columns: Iterable[str]) -> None:
    """Refuse a filter naming a field the index does not have, listing those it has."""
    known = list(columns)
    unknown = [f for f in filter_.fields if f not in known]
    if unknown:
        raise FilterError(
            f"unknown filter field {', '.join(map(repr, unknown))}: this index has {', '.join(known)} "
            "(more columns are stored with dataset.metadata_columns)"
        )


def _joined(kind: type[AllOf] | type[AnyOf], parts: list[Node]) -> Node:
    """`kind` of `parts`, a part of the same kind merged in (`a and (b and c)` is `a and b and c`)."""
    flat: list[Node] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, kind) else (part,))
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


class _Parser:
    """Recursive descent over one text, every token matched in place at `pos` (no slicing, no
    re-scanning: linear time), nesting bounded by MAX_FILTER_DEPTH and terms by MAX_FILTER_TERMS
    (counted over every text of a list)."""

    def __init__(self) -> None:
        self.n_terms = 0

    def parse(self, text: str) -> Node:
        self.text, self.pos = text, 0
        self.after: str | None = None  # the keyword or '(' last read, for the message at a premature end
        node = self._any_of(0)
        self._skip()
        if self.pos < len(text):
            if text[self.pos] == ")":
                self._fail("')' without its '('")
            self._fail(f"expected 'and', 'or' or the end before {self._near()}; write {SYNTAX}")
        return node

    def _fail(self, why: str) -> NoReturn:
        raise FilterError(f"cannot read filter {brief(self.text)}: {why}")

    def _near(self) -> str:
        return brief(_matched(_TOKEN, self.text, self.pos).group(), 40)

    def _skip(self) -> None:
        self.pos = _matched(_SPACE, self.text, self.pos).end()

    def _keyword(self, word: str) -> bool:
        self._skip()
        match = _KEYWORD.match(self.text, self.pos)
        if match and match.group(1).lower() == word:
            self.pos, self.after = match.end(), word
            return True
        return False

    def _any_of(self, depth: int) -> Node:
        parts = [self._all_of(depth)]
        while self._keyword("or"):
            parts.append(self._all_of(depth))
        return _joined(AnyOf, parts)

    def _all_of(self, depth: int) -> Node:
        parts = [self._atom(depth)]
        while self._keyword("and"):
            parts.append(self._atom(depth))
        return _joined(AllOf, parts)

    def _atom(self, depth: int) -> Node:
        self._skip()
        text = self.text
        if self.pos == len(text):
            if self.after:
                self._fail(f"it ends after '{self.after}'; a term must follow")
            raise FilterError(f"empty filter {brief(text)}; write {SYNTAX}")
        if text[self.pos] == "(":
            if depth >= MAX_FILTER_DEPTH:
                self._fail(f"parentheses nest deeper than {MAX_FILTER_DEPTH}")
            self.pos, self.after = self.pos + 1, "("
            node = self._any_of(depth + 1)
            self._skip()
            if self.pos == len(text) or text[self.pos] != ")":
                self._fail("a '(' is not closed" if self.pos == len(text) else f"expected ')' before {self._near()}")
            self.pos += 1
            return node
        return self._term()

    def _term(self) -> Term:
        text, start = self.text, self.pos
        if _NOT.match(text, start):
            self._fail("'not' is not supported; write field!=value")
        keyword = _KEYWORD.match(text, start)
        if keyword:
            self._fail(f"'{keyword.group()}' where a term should be; write {SYNTAX}")
        match = _FIELD_OP.match(text, start)
        if not match:
            raise FilterError(f"cannot read filter term {self._near()}: write {SYNTAX}")
        self.n_terms += 1
        if self.n_terms > MAX_FILTER_TERMS:
            raise FilterError(
                f"filter has more than {MAX_FILTER_TERMS} terms; list values in one term (label=a,b,c) instead"
            )
        field, op = match.group(1), match.group(2)
        self.pos = match.end()
        values = [self._value(field, op)]
        while self.pos < len(text) and text[self.pos] == ",":
            self.pos += 1
            values.append(self._value(field, op))
        if (op in ORDERED or op == "~") and len(values) != 1:
            self._fail(f"{field}{op} takes one value, got {len(values)}")
        return Term(field, op, tuple(values))

    def _value(self, field: str, op: str) -> str:
        """One value, quoted or bare; `pos` ends just after it (before any space)."""
        self._skip()
        text = self.text
        if self.pos < len(text) and text[self.pos] in "\"'":
            quote = "double" if text[self.pos] == '"' else "single"
            match = _QUOTED.match(text, self.pos)
            if not match:
                self._fail(f"unclosed {quote} quote in the value of {field}{op}")
            self.pos = match.end()
            if self.pos < len(text) and not (text[self.pos].isspace() or text[self.pos] in ",)"):
                self._fail(f"{self._near()} follows the closing quote of the value of {field}{op}")
            return match.group(1) if match.group(1) is not None else match.group(2)
        if self.pos < len(text) and text[self.pos] in "()":
            self._fail(f"'{text[self.pos]}' where the value of {field}{op} should be; quote a value that holds one")
        word = _WORD.match(text, self.pos)
        if not word:
            self._fail(f"{field}{op} has an empty value; quote it (\"\") to match ''")
        end = word.end()
        while True:  # more words of the same value: `label=Ankle boot`
            after_space = _matched(_SPACE, text, end).end()
            if after_space == end or _KEYWORD.match(text, after_space):
                break
            more = _WORD.match(text, after_space)
            if not more:
                break
            if _LOOKS_LIKE_TERM.match(more.group()):
                self.pos = after_space
                self._fail(
                    f"{self._near()} follows a value without 'and' or 'or' before it (quote a value that holds it)"
                )
            end = more.end()
        self.pos = end
        if end < len(text) and text[end] in "\"'":
            self._fail(f"a quote inside the value of {field}{op}; quote the whole value instead (\"...\" or '...')")
        return text[word.start() : end]


def _quoted(value: str) -> str:
    if value and not re.search(r"[\s,()\"']", value) and not _KEYWORD.fullmatch(value):
        return value
    return f"'{value}'" if '"' in value else f'"{value}"'


def _matched(pattern: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    """`pattern.match` for a pattern that matches anywhere (`\\s*`, or `.` as the last alternative)."""
    match = pattern.match(text, pos)
    if match is None:  # only past the end of the text, which callers never ask for
        raise AssertionError(f"{pattern.pattern!r} did not match at {pos}")
    return match
