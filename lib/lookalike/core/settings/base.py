"""The base of every settings section, and the names they share."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    model_validator,
)

DEFAULT_CACHE = "~/.cache/lookalike"

Auto = Literal["auto"]  # chosen from the data (lookalike.core.recipe)


EMPTY_TEXT = frozenset({"", "null", "none"})  # what --set and the environment spell "no value" with


class Section(BaseModel):
    """A frozen settings section; `NOT_IN_KEY` names fields that cannot change output."""

    # allow_inf_nan=False: no float setting takes inf or nan (`encoder.lr=inf` trained, and its manifest
    # recorded "lr": null, which every later run failed to read)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _empty_text_means_none(cls, data: Any) -> Any:
        """An optional field that is not text, given "", "null" or "none" as text (`--set
        encoder.crop_min_scale=null`, an empty environment variable), takes None: the "empty = ..."
        its description promises, where pydantic would try to parse the text as a number."""
        if not isinstance(data, dict):
            return data
        empty = {
            name
            for name, value in data.items()
            if isinstance(value, str)
            and value.strip().lower() in EMPTY_TEXT
            and name in cls.model_fields
            and type(None) in (args := get_args(cls.model_fields[name].annotation))
            and str not in args
        }
        return {**data, **dict.fromkeys(empty)} if empty else data

    def key_fields(self) -> dict[str, Any]:
        """The settings that can change this stage's output, for its stage key."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.NOT_IN_KEY}


def named_source(value: str) -> str:
    """`value` as a dataset source, refused when empty: "" would read as the current folder
    (Path("") is "."), a missing value taken for a choice (`--dataset "$UNSET_VARIABLE"`)."""
    if not value.strip():
        raise ValueError(
            "is empty; name the images: 'sample', a hub dataset, an image folder ('.' for the current one), "
            "a .parquet file or a save_to_disk folder"
        )
    return value
