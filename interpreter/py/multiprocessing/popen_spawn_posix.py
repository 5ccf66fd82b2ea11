# CPython's module name for the spawn start method's Popen, which code imports; procpy's
# implementation is in popen.py.
from .popen import PopenSpawn as Popen

__all__ = ['Popen']
