"""The base of every error that is the user's to fix (bad data, settings, tampered files), and
the text helpers that keep such messages one readable line.

The CLI prints these as one line without a traceback; Prefect does not retry them.
"""

from __future__ import annotations

import os
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# the user-info part of a URL: scheme://user:password@ (or scheme://token@)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]*)(?P<password>:[^/\s@]*)?@")


class LookalikeError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""


def path_text(path: str | os.PathLike) -> str:
    """A file name as text that UTF-8 (Arrow, JSON, W&B) can store: bytes that are not UTF-8
    become `\\xNN`.

    POSIX file names are bytes; Python smuggles undecodable ones through `str` as lone
    surrogates, which every UTF-8 writer refuses. Valid names come back unchanged.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def one_line(text: str) -> str:
    """`text` with control characters (a newline in a file name) escaped, so a message or a
    listing of file names stays one line per item."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def brief(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters and saying how long it was, so one bad value
    (a 5,000-character string) cannot flood an error line. The middle goes: a long path keeps
    its start and its file name."""
    text = repr(value)
    if len(text) <= limit:
        return text
    head = limit // 2
    return (
        f"{text[:head]}...{text[-(limit - head) :]} "
        f"({len(value) if isinstance(value, (str, bytes)) else len(text)} characters)"
    )


def redact_urls(text: str) -> str:
    """`text` with the credentials of every URL in it hidden (`http://user:***@host`, `https://***@host`
    for a bare token), so an error line that names a server never shows its password."""
    return _URL_CREDENTIALS.sub(
        lambda m: f"{m['scheme']}{m['user']}:***@" if m["password"] is not None else f"{m['scheme']}***@", text
    )


def refuse_while_a_worker_imports_main() -> None:
    """Raise a LookalikeError when called while a worker process re-imports the script that started
    the run: the worker processes of spawn (the dataset stage's, DataLoader's) begin by importing the
    main script, so a call at its top level would run again in each of them and wait on the locks its
    parent holds, forever."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise LookalikeError(
            "lookalike was called while a worker process imported the script that started the run: "
            'put the call under `if __name__ == "__main__":` (worker processes import the script first)'
        )
