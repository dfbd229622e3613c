"""The text helpers of error lines (lookalike.core.errors): values cut short, credentials hidden."""

from __future__ import annotations

from lookalike.core import errors


def test_the_credentials_of_every_url_in_a_line_are_hidden_and_nothing_else_changes():
    line = "at http://alice:s3cret@10.0.0.1:4200/api (https://TOKEN@hub.example/x, s3://bucket/p, ftp://bob:@h/)"
    assert errors.redact_urls(line) == (
        "at http://alice:***@10.0.0.1:4200/api (https://***@hub.example/x, s3://bucket/p, ftp://bob:***@h/)"
    )
    plain = "mail bob@example.com about https://host/a@b and http://127.0.0.1:4200/api"
    assert errors.redact_urls(plain) == plain


def test_a_long_value_is_cut_in_the_middle_so_a_path_keeps_its_file_name():
    from lookalike.core.errors import brief

    path = "/tmp/" + "x" * 200 + "/broken.png"
    cut = brief(path)
    assert cut.startswith("'/tmp/xxx") and "broken.png'..." not in cut and "/broken.png' (216 characters)" in cut
    assert len(cut) < 110
