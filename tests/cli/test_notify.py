"""`lookalike notify` (lookalike.cli.notify): its errors name the server without its password."""

from __future__ import annotations

import pytest

from conftest import free_port
from lookalike.core.errors import LookalikeError


def test_an_unreachable_server_is_named_without_the_password_in_its_url(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lookalike.cli.notify import send_images_added

    url = f"http://alice:s3cret@127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.raises(LookalikeError) as caught:
        send_images_added(str(tmp_path), "train")
    message = str(caught.value)
    assert "s3cret" not in message and "could not reach the Prefect server at http://alice:***@127.0.0.1:" in message
