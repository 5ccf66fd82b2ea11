# Named shared memory (CPython 3.11's `multiprocessing.shared_memory` API) over POSIX
# `shm_open` segments in /dev/shm, opened and mapped natively (`_procpy.shm_open`). Every
# segment this program tree creates or attaches is registered with its resource tracker
# (as CPython 3.11 does), which unlinks what is left once every process of the tree is gone.
# Imports stay light (no threading, secrets or functools): user code imports this module.
import os
import struct

import _procpy

from . import resource_tracker

__all__ = ['SharedMemory', 'ShareableList']

# Named segments are POSIX shm_open ones (CPython's flag; its Windows branch does not exist here).
_USE_POSIX = True

_SHM_NAME_PREFIX = '/psm_'
# CPython's budget for generated names (macOS allows 31 characters; stay portable).
_SHM_SAFE_NAME_LENGTH = 14


def _make_filename():
    '''A random name with CPython's shape: "/psm_" and hex digits.'''
    nbytes = (_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2
    return _SHM_NAME_PREFIX + os.urandom(nbytes).hex()


class SharedMemory:
    '''Creates a new shared memory block or attaches to an existing one.'''

    # Class-level defaults, so close()/__del__ work on a half-built object.
    _name = None
    _mem = None     # the native SharedBuffer (the mapping), None once closed
    _buf = None     # the memoryview handed out as .buf
    _size = 0

    def __init__(self, name=None, create=False, size=0):
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        if name is None:
            while True:
                name = _make_filename()
                try:
                    mem, size = _procpy.shm_open(name, True, size)
                except FileExistsError:
                    continue
                break
        else:
            # As CPython on POSIX: a leading slash is always added (so "/x" names "//x",
            # which shm_open resolves to "x" as well).
            if not isinstance(name, str):
                # CPython's message (it comes from its '/' + name).
                raise TypeError(f'can only concatenate str (not "{type(name).__name__}") to str')
            name = '/' + name
            mem, size = _procpy.shm_open(name, bool(create), size if create else 0)
        self._name = name
        self._mem = mem
        self._size = size
        self._buf = memoryview(mem)
        resource_tracker.register(self._name, 'shared_memory')

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass

    def __reduce__(self):
        # Travels by name: the other side attaches to the same segment.
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self):
        return f'{self.__class__.__name__}({self.name!r}, size={self.size})'

    @property
    def _fd(self):
        return self._mem.handle if self._mem is not None else -1

    @property
    def buf(self):
        "A memoryview of contents of the shared memory block."
        return self._buf

    @property
    def name(self):
        "Unique name that identifies the shared memory block."
        reported_name = self._name
        if reported_name.startswith('/'):
            reported_name = reported_name[1:]
        return reported_name

    @property
    def size(self):
        "Size in bytes."
        return self._size

    def close(self):
        '''Closes access to the shared memory from this instance but does
        not destroy the shared memory block.'''
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mem is not None:
            # Like CPython: refuse while slices of .buf (or views of them) are alive. The memory
            # itself is never unmapped under a live view: the mapping goes with its last user.
            if self._mem.exports > 0:
                raise BufferError('cannot close exported pointers exist')
            self._mem = None

    def unlink(self):
        '''Requests that the underlying shared memory block be destroyed.

        In order to ensure proper cleanup of resources, unlink should be
        called once (and only once) across all processes which have access
        to the shared memory block.'''
        if self._name:
            _procpy.shm_unlink(self._name)
            resource_tracker.unregister(self._name, 'shared_memory')


_encoding = 'utf8'

# ShareableList's layout in the segment (procpy's own; only procpy reads it). Little-endian:
#
#   offset 0            q        n, the number of items
#   offset 8            q*(n+1)  slot boundaries b[0..n], relative to the data start (b[0] = 0)
#   offset 16+8n        bytes    the data: item i lives in [b[i], b[i+1]) of the data area
#   then                B*n      each item's kind (0 int, 1 float, 2 bool, 3 str, 4 bytes, 5 None)
#   then                8n       reserved: zeros
#
# Slot sizes are fixed at creation: 8 bytes for int/float/bool/None, and for str/bytes the
# next multiple of 8 above len(item) (so there is always room for at least one NUL). An int
# is a signed 64-bit 'q', a float a 'd', a bool one byte at offset 7, None nothing; str
# (UTF-8) and bytes are NUL-padded and read back with trailing NULs stripped, as CPython does.
# The reserved tail makes the segment exactly as large as CPython's layout for the same list
# (16 + 17n + data), so `shm.size` agrees with CPython. A slot may later hold any kind that
# fits; `format` is derived from kinds and slot sizes, with CPython's struct codes.
_INT, _FLOAT, _BOOL, _STR, _BYTES, _NONE = range(6)
_KINDS = {int: _INT, float: _FLOAT, bool: _BOOL, str: _STR, bytes: _BYTES, type(None): _NONE}
_FIXED_FORMATS = {_INT: 'q', _FLOAT: 'd', _BOOL: 'xxxxxxx?', _NONE: 'xxxxxx?x'}
_ALIGNMENT = 8


def _kind_of(value):
    # Exactly these types, as CPython (a subclass of int is refused with the same KeyError).
    return _KINDS[type(value)]


def _pack(kind, value, size):
    '''The `size` bytes of a slot holding `value`.'''
    if kind == _INT:
        return struct.pack('<q', value)
    if kind == _FLOAT:
        return struct.pack('<d', value)
    if kind == _BOOL:
        return bytes(7) + (b'\x01' if value else b'\x00')
    if kind == _NONE:
        return bytes(size)
    data = value.encode(_encoding) if kind == _STR else value
    # Longer encodings are cut to the slot, as CPython's struct 's' code does.
    return data[:size] + bytes(max(0, size - len(data)))


class ShareableList:
    '''Pattern for a mutable list-like object shareable via a shared
    memory block. Items are int, float, bool, str, bytes or None; a slot's
    size is fixed when the list is created.'''

    def __init__(self, sequence=None, *, name=None):
        if name is None or sequence is not None:
            sequence = sequence or ()
            kinds = [_kind_of(item) for item in sequence]
            sizes = [_ALIGNMENT * (len(item) // _ALIGNMENT + 1) if k in (_STR, _BYTES) else 8
                     for item, k in zip(sequence, kinds)]
            bounds = [0]
            for s in sizes:
                bounds.append(bounds[-1] + s)
            n = len(kinds)
            # Build the whole image first: a bad value fails before anything is created.
            data = b''.join(_pack(k, item, s) for item, k, s in zip(sequence, kinds, sizes))
            image = (struct.pack('<q', n) + struct.pack('<%dq' % (n + 1), *bounds) + data
                     + bytes(kinds) + bytes(8 * n))
            self.shm = SharedMemory(name, create=True, size=len(image))
            self.shm.buf[:len(image)] = image
        else:
            self.shm = SharedMemory(name)
            buf = self.shm.buf
            (n,) = struct.unpack_from('<q', buf, 0)
            bounds = list(struct.unpack_from('<%dq' % (n + 1), buf, 8))
        self._n = n
        self._bounds = bounds
        self._data_start = 16 + 8 * n
        self._kinds_start = self._data_start + bounds[-1]

    def _slot(self, position):
        '''(start, size) of the slot at a non-negative position.'''
        start = self._bounds[position]
        return self._data_start + start, self._bounds[position + 1] - start

    def _position(self, position):
        position = position if position >= 0 else position + self._n
        if position >= self._n or position < 0:
            raise IndexError
        return position

    def __getitem__(self, position):
        try:
            position = self._position(position)
            offset, size = self._slot(position)
        except IndexError:
            raise IndexError('index out of range')
        buf = self.shm.buf
        kind = buf[self._kinds_start + position]
        if kind == _INT:
            return struct.unpack_from('<q', buf, offset)[0]
        if kind == _FLOAT:
            return struct.unpack_from('<d', buf, offset)[0]
        if kind == _BOOL:
            return buf[offset + 7] != 0
        if kind == _NONE:
            return None
        # Trailing NULs stripped as CPython does. Not bytes.rstrip(b'\x00'): RustPython 0.5's
        # drops a whole trailing 4-byte UTF-8 sequence with them (b'\xf0\x9f\x98\x80' -> b'').
        raw = bytes(buf[offset:offset + size])[::-1].lstrip(b'\x00')[::-1]
        return raw.decode(_encoding) if kind == _STR else raw

    def __setitem__(self, position, value):
        try:
            position = self._position(position)
            offset, size = self._slot(position)
        except IndexError:
            raise IndexError('assignment index out of range')
        kind = _kind_of(value)
        if kind in (_STR, _BYTES):
            encoded = value.encode(_encoding) if kind == _STR else value
            if len(encoded) > size:
                raise ValueError('bytes/str item exceeds available storage')
            packed = _pack(_BYTES, encoded, size)
        else:
            packed = _pack(kind, value, size)
        buf = self.shm.buf
        # Data first, then the kind: a reader in another process never sees the new kind
        # over the old bytes (it may still see the old kind over the new bytes, as in CPython).
        buf[offset:offset + len(packed)] = packed
        buf[self._kinds_start + position] = kind

    def __reduce__(self):
        # functools only here: importing it is slow on RustPython, and rarely needed.
        from functools import partial
        return partial(self.__class__, name=self.shm.name), ()

    def __len__(self):
        return self._n

    def __repr__(self):
        return f'{self.__class__.__name__}({list(self)}, name={self.shm.name!r})'

    def _get_packing_format(self, position):
        "Gets the packing format for a single value stored in the list."
        position = position if position >= 0 else position + self._n
        if position >= self._n or self._n < 0:
            raise IndexError("Requested position out of range.")
        kind = self.shm.buf[self._kinds_start + position]
        if kind in (_STR, _BYTES):
            return '%ds' % (self._bounds[position + 1] - self._bounds[position])
        return _FIXED_FORMATS[kind]

    @property
    def format(self):
        "The struct packing format used by all currently stored items."
        return ''.join(self._get_packing_format(i) for i in range(self._n))

    def count(self, value):
        "L.count(value) -> integer -- return number of occurrences of value."
        return sum(value == entry for entry in self)

    def index(self, value):
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        raise ValueError(f'{value!r} not in this container')

    # types.GenericAlias, without importing `types`.
    __class_getitem__ = classmethod(type(list[int]))
