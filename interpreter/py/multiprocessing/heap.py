# A heap of shared memory blocks (CPython 3.11's `multiprocessing.heap` API). Arenas are
# `_procpy.SharedBuffer`s (memory files every process maps), so a BufferWrapper travels to a
# child under every start method: the codec sends the arena's descriptor. Blocks are carved
# out of arenas with a best-fit free list; the private bookkeeping (`_arenas`, `_len_to_seq`,
# `_allocated_blocks`, ...) keeps CPython's shape because its test suite inspects it.
import bisect
import os
import sys
import threading

import _procpy

from . import util

__all__ = ['BufferWrapper']


class Arena(object):
    '''A shared memory file of `size` bytes.'''

    def __init__(self, size, fd=-1):
        # `fd` is accepted for CPython's signature; procpy's arenas always make their own
        # memory file (a descriptor handed in could not be sealed against shrinking).
        self.size = size
        self.buffer = _procpy.SharedBuffer(size)

    def __reduce__(self):
        # Through a DupFd, so an arena (and the BufferWrappers in it) may travel through a
        # Queue or a Pipe too, as CPython's do. The DupFd stays with the arena: a channel
        # copies the descriptor only once the whole message is encoded.
        from .reduction import DupFd
        if getattr(self, '_dupfd', None) is None:
            self._dupfd = DupFd(self.buffer.handle)
        return _rebuild_arena, (self.size, self._dupfd)


def _rebuild_arena(size, dupfd):
    arena = Arena.__new__(Arena)
    arena.size = size
    fd = dupfd.detach()
    try:
        arena.buffer = _procpy.shared_buffer_from_fd(fd, size)
    finally:
        os.close(fd)
    return arena


class Heap(object):

    _alignment = 8
    # Free arenas larger than this are returned to the system at once.
    _DISCARD_FREE_SPACE_LARGER_THAN = 4 * 1024 ** 2
    _DOUBLE_ARENA_SIZE_UNTIL = 4 * 1024 ** 2

    def __init__(self, size=None):
        self._lastpid = os.getpid()
        self._lock = threading.Lock()
        self._size = size if size is not None else (os.sysconf('SC_PAGESIZE') if hasattr(os, 'sysconf') else 4096)
        self._lengths = []               # sorted lengths of free blocks
        self._len_to_seq = {}            # length -> [(arena, start, stop)] free blocks
        self._start_to_block = {}        # (arena, start) -> free block
        self._stop_to_block = {}         # (arena, stop) -> free block
        self._allocated_blocks = {}      # arena -> {(start, stop)}
        self._arenas = []
        # Blocks freed while the lock was held (by the garbage collector), freed later.
        self._pending_free_blocks = []
        self._n_mallocs = 0
        self._n_frees = 0

    @staticmethod
    def _roundup(n, alignment):
        mask = alignment - 1
        return (n + mask) & ~mask

    def _new_arena(self, size):
        length = self._roundup(max(self._size, size), self._size)
        # Arenas grow geometrically up to a limit, so many small blocks need few arenas.
        if self._size < self._DOUBLE_ARENA_SIZE_UNTIL:
            self._size *= 2
        util.info('allocating a new mmap of length %d', length)
        arena = Arena(length)
        self._arenas.append(arena)
        return (arena, 0, length)

    def _discard_arena(self, arena):
        length = arena.size
        if length < self._DISCARD_FREE_SPACE_LARGER_THAN:
            return
        blocks = self._allocated_blocks.pop(arena)
        assert not blocks
        del self._start_to_block[(arena, 0)]
        del self._stop_to_block[(arena, length)]
        self._arenas.remove(arena)
        seq = self._len_to_seq[length]
        seq.remove((arena, 0, length))
        if not seq:
            del self._len_to_seq[length]
            self._lengths.remove(length)

    def _malloc(self, size):
        i = bisect.bisect_left(self._lengths, size)
        if i == len(self._lengths):
            return self._new_arena(size)
        length = self._lengths[i]
        seq = self._len_to_seq[length]
        block = seq.pop()
        if not seq:
            del self._len_to_seq[length], self._lengths[i]
        arena, start, stop = block
        del self._start_to_block[(arena, start)]
        del self._stop_to_block[(arena, stop)]
        return block

    def _add_free_block(self, block):
        arena, start, stop = block
        # Merge with the free neighbours on either side.
        prev = self._stop_to_block.pop((arena, start), None)
        if prev is not None:
            self._forget_free(prev)
            start = prev[1]
        nxt = self._start_to_block.pop((arena, stop), None)
        if nxt is not None:
            self._forget_free(nxt)
            stop = nxt[2]
        block = (arena, start, stop)
        length = stop - start
        seq = self._len_to_seq.get(length)
        if seq is None:
            seq = self._len_to_seq[length] = []
            bisect.insort(self._lengths, length)
        seq.append(block)
        self._start_to_block[(arena, start)] = block
        self._stop_to_block[(arena, stop)] = block
        return block

    def _forget_free(self, block):
        arena, start, stop = block
        self._start_to_block.pop((arena, start), None)
        self._stop_to_block.pop((arena, stop), None)
        length = stop - start
        seq = self._len_to_seq[length]
        seq.remove(block)
        if not seq:
            del self._len_to_seq[length]
            self._lengths.remove(length)

    def _free(self, block):
        arena, start, stop = block
        merged = self._add_free_block(block)
        self._allocated_blocks[arena].remove((start, stop))
        if not self._allocated_blocks[arena] and merged[1] == 0 and merged[2] == arena.size:
            self._discard_arena(arena)

    def _free_pending_blocks(self):
        while self._pending_free_blocks:
            self._free(self._pending_free_blocks.pop())

    def free(self, block):
        # Called by a finalizer, possibly from the garbage collector while this thread holds
        # the lock: then only queue the block (waiting would deadlock).
        if os.getpid() != self._lastpid:
            raise ValueError('My pid ({0:n}) is not last pid {1:n}'.format(
                os.getpid(), self._lastpid))
        if not self._lock.acquire(False):
            self._pending_free_blocks.append(block)
            return
        try:
            self._n_frees += 1
            self._free_pending_blocks()
            self._free(block)
        finally:
            self._lock.release()

    def malloc(self, size):
        if size < 0:
            raise ValueError('Size {0:n} out of range'.format(size))
        if sys.maxsize <= size:
            raise OverflowError('Size {0:n} too large'.format(size))
        if os.getpid() != self._lastpid:
            # A forked child starts with a fresh heap: the parent's blocks are not its own.
            self.__init__()
        with self._lock:
            self._n_mallocs += 1
            self._free_pending_blocks()
            size = self._roundup(max(size, 1), self._alignment)
            arena, start, stop = self._malloc(size)
            real_stop = start + size
            if real_stop < stop:
                self._add_free_block((arena, real_stop, stop))
            self._allocated_blocks.setdefault(arena, set()).add((start, real_stop))
            return (arena, start, real_stop)


class BufferWrapper(object):
    '''A block of shared memory of `size` bytes, freed when the wrapper is.'''

    _heap = Heap()

    def __init__(self, size):
        if size < 0:
            raise ValueError('Size {0:n} out of range'.format(size))
        if sys.maxsize <= size:
            raise OverflowError('Size {0:n} too large'.format(size))
        block = BufferWrapper._heap.malloc(size)
        self._state = (block, size)
        util.Finalize(self, BufferWrapper._heap.free, args=(block,))

    def create_memoryview(self):
        (arena, start, stop), size = self._state
        return memoryview(arena.buffer)[start:start + size]
