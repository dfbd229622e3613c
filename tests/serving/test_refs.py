"""Index references: one parser for what the CLI, `lookalike.load` and the server take to name a built
index, and one resolver from it to the chain of manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lookalike.serving.queries import QueryError
from lookalike.serving.refs import IndexRef, alias_chain, index_chain, resolve_name

KEY = "0123456789abcdef"
WANDB = "team/lookalike/simclr-embeddings:production"


def names_index(text: str, root: Path) -> bool:
    return IndexRef.parse(text).names_index(root)


def localize(root: Path, text: str) -> tuple[Path, str]:
    return IndexRef.parse(text).localize(root)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A root with one alias file, and beside it an index folder of another root and a folder that is none."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "artifacts"
    (root / "aliases").mkdir(parents=True)
    (root / "aliases" / "production.json").write_text("{}")
    (tmp_path / "other" / "index" / KEY).mkdir(parents=True)
    (tmp_path / "other" / "index" / KEY / "manifest.json").write_text("{}")
    (tmp_path / "plain" / KEY).mkdir(parents=True)
    (tmp_path / "plain" / KEY / "manifest.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    return root


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("s3://bucket/team/aliases/production", "s3"),
        (WANDB, "wandb"),
        ("./other/index/" + KEY, "folder"),
        ("other/index/" + KEY, "folder"),
        ("~/nowhere/index/" + KEY, "alias"),  # a path to no folder is a name, which resolving refuses
        (KEY, "key"),
        ("production", "alias"),
        ("plain", "alias"),  # a bare name is never a folder of the working directory
        ("flat-l2", "alias"),
    ],
)
def test_each_spelling_is_read_as_one_kind_of_reference(root, text, kind):
    assert IndexRef.parse(text) == IndexRef(text, kind)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("s3://bucket/team/index/" + KEY, True),
        (KEY, True),  # a key names an index even before it is found under the root
        (WANDB, True),
        ("wandb://" + WANDB, True),
        ("production", True),  # an alias that exists
        ("staging", False),  # one that does not: a preset could be meant
        ("flat-l2", False),
        ("IVF256,Flat", False),  # a FAISS factory string is no alias name
        ("./other/index/" + KEY, True),
        ("other/index/" + KEY, True),
        ("./empty", False),  # a folder without a manifest names nothing
        ("x" * 10_000, False),
    ],
)
def test_what_names_a_built_index_and_what_is_left_for_a_preset(root, text, named):
    assert names_index(text, root) is named


def test_an_index_folder_of_another_root_is_read_from_that_root(root):
    assert localize(root, "./other/index/" + KEY) == ((root.parent / "other").resolve(), KEY)
    assert localize(root, str(root.parent / "other" / "index" / KEY)) == ((root.parent / "other").resolve(), KEY)


@pytest.mark.parametrize("text", ["./empty", "./plain/" + KEY])
def test_a_folder_that_is_no_index_folder_is_a_404_naming_it(root, text):
    with pytest.raises(QueryError, match=r"is not a finished index folder \(<artifacts root>/index/<key>/") as caught:
        localize(root, text)
    assert caught.value.status == 404


@pytest.mark.parametrize("text", ["production", KEY, "flat-l2", "./missing/index/" + KEY])
def test_a_name_or_a_path_to_nothing_is_looked_up_under_the_root(root, text):
    assert localize(root, text) == (root, text)


@pytest.mark.parametrize("text", ["staging", KEY, "x" * 10_000, "Not An Alias"])
def test_a_name_that_is_no_alias_or_index_under_the_root_is_a_404_saying_what_to_give(root, text):
    with pytest.raises(
        QueryError, match=r"no index .* under .*: give an alias \(production, latest\) or an index"
    ) as e:
        resolve_name(root, text)
    assert e.value.status == 404 and "\n" not in str(e.value)


def test_a_key_and_an_alias_resolve_to_the_same_chain(tiny_chain, tmp_path):
    from lookalike.artifacts.aliases import chain_for_index, set_alias

    root = tmp_path / "root"
    shutil.copytree(tiny_chain, root)
    ((index,),) = [list((root / "index").glob("*/manifest.json"))]
    key = index.parent.name
    by_key, no_alias = resolve_name(root, key)
    assert no_alias is None and by_key == index_chain(root, key)
    assert [m.stage for m in (by_key.dataset, by_key.encoder, by_key.embeddings, by_key.index)] == [
        "dataset",
        "encoder",
        "embeddings",
        "index",
    ]
    set_alias(root, "production", chain_for_index(root, key))
    by_alias, alias = resolve_name(root, "production")
    assert alias is not None and alias.name == "production" and by_alias == by_key
    assert alias_chain(root, "production") == by_key


def test_a_missing_alias_read_by_name_says_how_to_make_one(tmp_path):
    with pytest.raises(Exception, match="no 'production' alias under .*: build and promote an index first"):
        alias_chain(tmp_path, "production")


def test_only_an_s3_alias_url_is_followed_remotely():
    assert IndexRef.parse("s3://bucket/team/aliases/production").remote_alias
    assert not IndexRef.parse("s3://bucket/team/index/" + KEY).remote_alias
    assert not IndexRef.parse("production").remote_alias
