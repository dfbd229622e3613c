"""tasks/secrets.py without a Prefect server: Prefect's `Secret.load` answers from a dict here, so what
is tested is ours: which block shapes are accepted, what lands in the environment, and that a bad
block sets nothing. Blocks saved on a real server: tests/e2e/test_aliases.py."""

from __future__ import annotations

import os

import pytest

from lookalike.tasks.secrets import SecretBlockError, export_secret_blocks

NAMES = ("WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def blocks(monkeypatch) -> dict:
    """The Secret blocks the 'server' holds, by name; the variables they set start unset."""
    from prefect.blocks.system import Secret

    saved: dict = {}

    def load(name: str) -> Secret:
        if name not in saved:  # as Prefect says it
            raise ValueError(f"Unable to find block document named {name} for block type secret")
        return Secret(value=saved[name])

    monkeypatch.setattr(Secret, "load", load)
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return saved


def configured(tiny, wandb: str | None = None, aws: str | None = None):
    return tiny.model_copy(
        update={
            "tracking": tiny.tracking.model_copy(update={"api_key_secret": wandb}),
            "mirror": tiny.mirror.model_copy(update={"credentials_secret": aws}),
        }
    )


def test_no_secret_settings_read_no_blocks_and_set_nothing(blocks, tiny):
    assert export_secret_blocks(tiny) == []
    assert not {name for name in NAMES if name in os.environ}


def test_a_session_token_is_passed_on_when_the_block_holds_one(blocks, tiny):
    blocks["aws"] = {"aws_access_key_id": "AKIA", "aws_secret_access_key": "s3cr3t", "aws_session_token": "tok"}
    blocks["wandb"] = "key-1"
    assert export_secret_blocks(configured(tiny, "wandb", "aws")) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "WANDB_API_KEY",
    ]
    assert [os.environ[name] for name in NAMES] == ["key-1", "AKIA", "s3cr3t", "tok"]


@pytest.mark.parametrize(
    "wandb, aws, says",
    [
        (
            {"key": "x"},
            None,
            "tracking.api_key_secret: Secret block 'wandb' must hold the W&B API key as a plain string",
        ),
        ("", None, "tracking.api_key_secret: Secret block 'wandb' must hold the W&B API key as a plain string"),
        (
            None,
            "AKIA:s3cr3t",
            "mirror.credentials_secret: Secret block 'aws' must hold JSON with aws_access_key_id, "
            "aws_secret_access_key (missing: aws_access_key_id, aws_secret_access_key)",
        ),
    ],
)
def test_a_block_of_the_wrong_shape_names_the_setting_and_what_it_must_hold(blocks, tiny, wandb, aws, says):
    if wandb is not None:
        blocks["wandb"] = wandb
    if aws is not None:
        blocks["aws"] = aws
    settings = configured(tiny, "wandb" if wandb is not None else None, "aws" if aws is not None else None)
    with pytest.raises(SecretBlockError) as caught:
        export_secret_blocks(settings)
    assert str(caught.value) == says


def test_nothing_is_exported_when_any_configured_block_is_bad(blocks, tiny):
    """The W&B key is good, the AWS block is missing: the run stops before either reaches the environment."""
    blocks["wandb"] = "key-1"
    with pytest.raises(SecretBlockError, match="mirror.credentials_secret: no Prefect Secret block named 'gone'"):
        export_secret_blocks(configured(tiny, "wandb", "gone"))
    assert "WANDB_API_KEY" not in os.environ
