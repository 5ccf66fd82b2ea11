# CPython's module name for the fork start method's Popen, which code imports; procpy's
# implementation is in popen.py.
from .popen import PopenFork as Popen

__all__ = ['Popen']
