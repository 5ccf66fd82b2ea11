"""Helpers shared by the conformance scripts (imported, never run by the harness)."""


def attempt(label, fn):
    """Call fn(); print its result, or the exception's type and message."""
    try:
        res = fn()
    except Exception as e:
        print('%s: %s: %s' % (label, type(e).__name__, e))
    else:
        print('%s: ok %r' % (label, res))
