"""The base of every error that is the user's to fix (bad data, settings, tampered files).

The CLI prints these as one line without a traceback; Prefect does not retry them.
"""


class LookalikeError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""
