"""`lookalike notify` (flows/notify.py): one line, in bounded time, whatever the server does, naming the server
without its password."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from helpers import free_port

import lookalike.flows.notify as notify
from lookalike.core.errors import LookalikeError


@pytest.fixture
def mute_server():
    """The URL of a server that accepts the events websocket and then never answers."""
    import websockets.asyncio.server

    ready, stop, url = threading.Event(), threading.Event(), []

    async def never_answer(connection) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)

    async def main() -> None:
        async with websockets.asyncio.server.serve(never_answer, "127.0.0.1", 0, close_timeout=0.1) as server:
            url.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api")
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield url[0]
    stop.set()
    thread.join(10)


def test_a_server_that_accepts_the_websocket_and_never_answers_is_one_line_in_bounded_time(mute_server, monkeypatch):
    """It waited for an answer to its login forever (200 s and counting)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(notify, "SEND_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: mute_server}), pytest.raises(LookalikeError) as caught:
        notify.send_images_added("/data/new-images", "train")
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "\n" not in message and f"could not reach the Prefect server at {mute_server}" in message
    assert "no answer within 0.5 s" in message


@pytest.mark.parametrize("dataset", ["", "  "])
def test_an_empty_dataset_is_refused_instead_of_announcing_the_current_folder(dataset):
    with pytest.raises(LookalikeError, match=r"^--dataset is empty; name the images"):
        notify.send_images_added(dataset, "train")


def test_an_unreachable_server_is_named_without_the_password_in_its_url(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lookalike.flows.notify import send_images_added

    url = f"http://alice:s3cret@127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.raises(LookalikeError) as caught:
        send_images_added(str(tmp_path), "train")
    message = str(caught.value)
    assert "s3cret" not in message and "could not reach the Prefect server at http://alice:***@127.0.0.1:" in message
