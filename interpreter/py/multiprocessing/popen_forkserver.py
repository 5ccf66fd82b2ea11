# CPython's module name for the forkserver start method's Popen, which code imports; procpy's
# implementation is in popen.py.
from .popen import PopenForkServer as Popen

__all__ = ['Popen']
