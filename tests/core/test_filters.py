"""The filter language (lookalike.core.filters): and/or/parentheses/quotes read as written, anything
else refused in one line, and the size of a filter bounded and read in one pass."""

from __future__ import annotations

import pytest

from lookalike.core import filters
from lookalike.core.filters import FilterError, Term, parse_filter


def test_or_and_parentheses_and_quotes_are_read_as_written():
    sandal_or_bag = parse_filter("label!=Sandal or label=Bag").root
    assert sandal_or_bag == filters.AnyOf((Term("label", "!=", ("Sandal",)), Term("label", "=", ("Bag",))))
    # and binds before or; parentheses group; keywords in any case
    assert parse_filter("a=1 OR b=2 and c=3").root == filters.AnyOf(
        (Term("a", "=", ("1",)), filters.AllOf((Term("b", "=", ("2",)), Term("c", "=", ("3",)))))
    )
    assert str(parse_filter("(a=1 or b=2) and c=3")) == "(a=1 or b=2) and c=3"
    assert str(parse_filter(["a=1 or b=2", "c=3"])) == "(a=1 or b=2) and c=3"  # a list: all must hold
    # single and double quotes keep a value whole, the words and/or and parentheses included
    assert parse_filter("label='Sneaker'").root == Term("label", "=", ("Sneaker",))
    assert parse_filter("label='Rock and Roll' or x=\"(a, b)\"").root == filters.AnyOf(
        (Term("label", "=", ("Rock and Roll",)), Term("x", "=", ("(a, b)",)))
    )
    # unquoted words of one value keep their spaces; the old spellings still read the same
    assert parse_filter("label=Ankle boot and width>=28").root.parts[0] == Term("label", "=", ("Ankle boot",))
    assert str(parse_filter('label="T-shirt/top",Bag and width>=64')) == "label=T-shirt/top,Bag and width>=64"
    assert parse_filter(["a=1", "b!=2 and c~x*"]).fields == ["a", "b", "c"]
    assert parse_filter("path~*/year=2020/*").root == Term("path", "~", ("*/year=2020/*",))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("label=Sneaker and", "it ends after 'and'; a term must follow"),
        ("label=Sneaker or", "it ends after 'or'"),
        ("label=Sneaker and and width>=1", "'and' where a term should be"),
        ("label=Sneaker width>=1", "'width>=1' follows a value without 'and' or 'or' before it"),
        ("label=Levi's", "a quote inside the value of label="),
        ("label='Sneaker", "unclosed single quote"),
        ('label="Bag', "unclosed double quote"),
        ('label="a"b', "'b' follows the closing quote"),
        ("(label=Bag", "a '(' is not closed"),
        ("label=Bag)", "')' without its '('"),
        ("label=(Bag)", "'(' where the value of label= should be"),
        ("not label=Bag", "'not' is not supported; write field!=value"),
        ("width>=1,2", ">= takes one value, got 2"),
        ("label=", "empty value"),
        ("label=a,,b", "empty value"),
        ("label", "cannot read filter term 'label'"),
        ("", "empty filter"),
        ("(" * 100 + "a=1" + ")" * 100, "parentheses nest deeper than"),
    ],
)
def test_anything_but_a_whole_filter_is_refused_in_one_line(text, says):
    with pytest.raises(FilterError, match=says.replace("(", r"\(").replace(")", r"\)")) as caught:
        parse_filter(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("where", [5, b"label=Bag", {"label": "Bag"}, ["label=Bag", 3]])
def test_a_filter_that_is_not_text_is_refused(where):
    with pytest.raises(FilterError, match="string"):
        parse_filter(where)


def test_the_length_and_the_number_of_terms_are_bounded_and_a_maximal_filter_parses():
    """At the bounds a filter parses (in milliseconds: one regex match per token, no re-slicing);
    one character or one term more is refused before any parsing, in one line naming the bound."""
    MAX_FILTER_CHARS, MAX_FILTER_TERMS = filters.MAX_FILTER_CHARS, filters.MAX_FILTER_TERMS
    words = "label=" + ("ab " * MAX_FILTER_CHARS)[: MAX_FILTER_CHARS - 6].rstrip()
    listed = "label=" + ",".join(["x"] * ((MAX_FILTER_CHARS - 6) // 2))
    for text in (words, listed, "label=" + "x" * (MAX_FILTER_CHARS - 6)):
        assert len(text) <= MAX_FILTER_CHARS and len(parse_filter(text).terms) == 1
    terms = [f"f{i}=1" for i in range(MAX_FILTER_TERMS)]
    assert len(parse_filter(" or ".join(terms)).terms) == MAX_FILTER_TERMS
    with pytest.raises(FilterError, match=f"over the {MAX_FILTER_CHARS:,} allowed"):
        parse_filter("label=" + "x" * MAX_FILTER_CHARS)
    with pytest.raises(FilterError, match=f"over the {MAX_FILTER_CHARS:,} allowed"):
        parse_filter(["label=x"] * MAX_FILTER_CHARS)  # a list counts as a whole
    with pytest.raises(FilterError, match=f"more than {MAX_FILTER_TERMS} terms"):
        parse_filter(" or ".join([*terms, "one=more"]))
    with pytest.raises(FilterError, match=f"more than {MAX_FILTER_TERMS} terms"):
        parse_filter([*terms, "one=more"])
