# procpy's multiprocessing: CPython 3.11's API over the native `_procpy` module.
# The public names are the default context's, as in CPython.
import sys

# Only procpy's frozen submodules: never RustPython's own pure-Python multiprocessing, which the
# frozen importer would otherwise find on disk through this package's __path__.
__path__ = []

from . import context

__all__ = [x for x in dir(context._default_context) if not x.startswith('_')]
globals().update((name, getattr(context._default_context, name)) for name in __all__)

SUBDEBUG = 5
SUBWARNING = 25

# Functions defined in the main script pickle as `__main__.f`; children import the script as
# `__mp_main__`. Make both names work in the parent too, so objects can travel back.
if '__main__' in sys.modules:
    sys.modules.setdefault('__mp_main__', sys.modules['__main__'])
