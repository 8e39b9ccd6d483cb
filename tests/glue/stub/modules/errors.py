"""modules/errors.py: ``report`` logs an exception and carries on (the WebUI never re-raises from script hooks)."""

import traceback

#: Every report made, so tests can assert that none happened (or that one did).
reported: list[str] = []


def report(message, *, exc_info=False):
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    reported.append(text)
    print(text)
