# CPython's resource sharer serves descriptors to processes that unpickle a DupFd. procpy needs
# no server: a DupFd carries its descriptor itself (see reduction.DupFd), so `stop()` has
# nothing to stop.
from .reduction import DupFd

__all__ = ['stop']


def stop(timeout=None):
    '''Stop the background thread and clear registered resources (none in procpy).'''
