# Shared values and arrays. CPython builds them from ctypes objects placed in a shared heap;
# procpy places them in a `_procpy.SharedBuffer` (a memory file every process maps) and reads
# and writes elements through a memoryview cast to the element's format, converting values
# the way ctypes does (integers wrap to the type's width, c_char takes one byte, ...).
__all__ = ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized']

import _procpy

from . import context

# typecode -> (ctypes type name, memoryview format, kind)
_TYPES = {
    'c': ('c_char', 'B', 'char'),
    'u': ('c_wchar', 'I', 'wchar'),
    'b': ('c_byte', 'b', 'int'),
    'B': ('c_ubyte', 'B', 'int'),
    'h': ('c_short', 'h', 'int'),
    'H': ('c_ushort', 'H', 'int'),
    'i': ('c_int', 'i', 'int'),
    'I': ('c_uint', 'I', 'int'),
    'l': ('c_long', 'l', 'int'),
    'L': ('c_ulong', 'L', 'int'),
    'q': ('c_long', 'q', 'int'),
    'Q': ('c_ulong', 'Q', 'int'),
    'f': ('c_float', 'f', 'float'),
    'd': ('c_double', 'd', 'float'),
    '?': ('c_bool', '?', 'bool'),
}
typecode_to_type = {code: name for code, (name, _, _) in _TYPES.items() if code != '?'}
_SIZES = {'B': 1, 'b': 1, 'h': 2, 'H': 2, 'i': 4, 'I': 4, 'l': 8, 'L': 8, 'q': 8, 'Q': 8,
          'f': 4, 'd': 8, '?': 1}


def _element(typecode_or_type):
    '''(typecode, ctypes name) for a typecode string or a ctypes simple type.'''
    if isinstance(typecode_or_type, str):
        if typecode_or_type not in typecode_to_type:
            raise TypeError('unsupported typecode %r: use one of %s'
                            % (typecode_or_type, ' '.join(sorted(typecode_to_type))))
        return typecode_or_type, _TYPES[typecode_or_type][0]
    code = getattr(typecode_or_type, '_type_', None)
    if isinstance(code, str) and code in _TYPES:
        return code, _TYPES[code][0]
    raise TypeError('procpy shares only simple element types (a typecode such as \'i\' or a '
                    'ctypes simple type such as c_double), not %r' % (typecode_or_type,))


def _converter(code):
    name, fmt, kind = _TYPES[code]
    if kind == 'int':
        bits = _SIZES[fmt] * 8
        mask = (1 << bits) - 1
        signed = fmt.islower()

        def conv(v):
            if not isinstance(v, int):
                raise TypeError("'%s' object cannot be interpreted as an integer" % type(v).__name__)
            v &= mask
            if signed and v >> (bits - 1):
                v -= 1 << bits
            return v
        return conv, None
    if kind == 'float':
        def conv(v):
            if not isinstance(v, (int, float)):
                raise TypeError('must be real number, not %s' % type(v).__name__)
            return float(v)
        return conv, None
    if kind == 'bool':
        return bool, None
    if kind == 'char':
        def conv(v):
            if isinstance(v, int) and 0 <= v < 256:
                return v
            if isinstance(v, (bytes, bytearray)) and len(v) == 1:
                return v[0]
            raise TypeError('one character bytes, bytearray or integer expected')
        return conv, lambda raw: bytes((raw,))
    # wchar
    def conv(v):
        if not isinstance(v, str):
            raise TypeError('unicode string expected instead of %s instance' % type(v).__name__)
        if len(v) != 1:
            raise TypeError('one character unicode string expected')
        return ord(v)
    return conv, chr


def _view(buffer, code, length):
    fmt = _TYPES[code][1]
    return memoryview(buffer).cast(fmt)


class _Shared(object):
    '''What RawValue/RawArray return: like a ctypes object, its memory shared.'''

    def __reduce__(self):
        context.assert_spawning(self)
        return _rebuild, (type(self), self._typecode, self._length, self._buffer)


def _rebuild(cls, code, length, buffer):
    obj = cls.__new__(cls)
    obj._init(code, length, buffer)
    return obj


class SharedValue(_Shared):

    def _init(self, code, length, buffer):
        self._typecode, self._length, self._buffer = code, length, buffer
        self._mv = _view(buffer, code, length)
        self._conv, self._out = _converter(code)
        self._type_name = _TYPES[code][0]

    @property
    def value(self):
        raw = self._mv[0]
        return raw if self._out is None else self._out(raw)

    @value.setter
    def value(self, v):
        self._mv[0] = self._conv(v)

    def __repr__(self):
        return '%s(%r)' % (self._type_name, self.value)


class SharedArray(_Shared):

    def _init(self, code, length, buffer):
        self._typecode, self._length, self._buffer = code, length, buffer
        self._mv = _view(buffer, code, length)
        self._conv, self._out = _converter(code)
        self._type_name = '%s_Array_%d' % (_TYPES[code][0], length)

    def __len__(self):
        return self._length

    def _index(self, i):
        if not isinstance(i, int):
            i = i.__index__()
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError('invalid index')
        return i

    def __getitem__(self, i):
        if isinstance(i, slice):
            items = self._mv[:self._length][i].tolist()
            if self._typecode == 'c':
                return bytes(items)
            if self._typecode == 'u':
                return ''.join(map(chr, items))
            return items
        raw = self._mv[self._index(i)]
        return raw if self._out is None else self._out(raw)

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            idx = range(self._length)[i]
            if len(value) != len(idx):
                raise ValueError('Can only assign sequence of same size')
            if self._typecode in 'cu' and isinstance(value, (bytes, bytearray, str)):
                value = [value[k:k + 1] for k in range(len(value))]
            converted = [self._conv(v) for v in value]
            for k, v in zip(idx, converted):
                self._mv[k] = v
            return
        self._mv[self._index(i)] = self._conv(value)

    def __iter__(self):
        for k in range(self._length):
            yield self[k]

    def __repr__(self):
        return '<multiprocessing.sharedctypes.%s object at %#x>' % (self._type_name, id(self))

    # c_char / c_wchar arrays: the string up to the first NUL, and (c_char) the raw bytes.
    @property
    def value(self):
        if self._typecode not in 'cu':
            raise AttributeError("'%s' object has no attribute 'value'" % self._type_name)
        s = self[:]
        end = s.find(b'\0' if self._typecode == 'c' else '\0')
        return s if end < 0 else s[:end]

    @value.setter
    def value(self, v):
        if self._typecode not in 'cu':
            raise AttributeError("'%s' object has no attribute 'value'" % self._type_name)
        if len(v) > self._length:
            raise ValueError('byte string too long' if self._typecode == 'c' else 'string too long')
        self[:len(v)] = v
        if len(v) < self._length:
            self[len(v)] = b'\0' if self._typecode == 'c' else '\0'

    @property
    def raw(self):
        if self._typecode != 'c':
            raise AttributeError("'%s' object has no attribute 'raw'" % self._type_name)
        return self[:]

    @raw.setter
    def raw(self, v):
        if self._typecode != 'c':
            raise AttributeError("'%s' object has no attribute 'raw'" % self._type_name)
        if len(v) > self._length:
            raise ValueError('byte string too long')
        self[:len(v)] = v


def _size_of(code):
    fmt = _TYPES[code][1]
    return _SIZES[fmt]


def _is_ctype(typecode_or_type):
    '''A ctypes type other than the simple ones above (a Structure, Union or array).'''
    if isinstance(typecode_or_type, str) or not isinstance(typecode_or_type, type):
        return False
    code = getattr(typecode_or_type, '_type_', None)
    if isinstance(code, str) and code in _TYPES:
        return False
    import ctypes
    return issubclass(typecode_or_type, (ctypes.Structure, ctypes.Union, ctypes.Array))


# Other ctypes types are real ctypes objects over a block of the shared heap (from_buffer),
# as CPython's are; they travel to children as (type, block) through the codec's reducer table.

def _rebuild_ctype(type_, wrapper, length):
    if length is not None:
        type_ = type_ * length
    _procpy._reducers[type_] = _reduce_ctype
    obj = type_.from_buffer(wrapper.create_memoryview())
    obj._wrapper = wrapper
    return obj


def _reduce_ctype(obj):
    wrapper = getattr(obj, '_wrapper', None)
    if wrapper is None:
        # An ordinary (unshared) object of a type registered here: its own way.
        return obj.__reduce_ex__(4)
    context.assert_spawning(obj)
    import ctypes
    if isinstance(obj, ctypes.Array):
        return _rebuild_ctype, (obj._type_, wrapper, obj._length_)
    return _rebuild_ctype, (type(obj), wrapper, None)


def _new_ctype(type_, length=None):
    import ctypes
    from . import heap
    size = ctypes.sizeof(type_) * (1 if length is None else length)
    return _rebuild_ctype(type_, heap.BufferWrapper(size), length)


def RawValue(typecode_or_type, *args):
    '''Returns a ctypes-like object allocated from shared memory'''
    if _is_ctype(typecode_or_type):
        obj = _new_ctype(typecode_or_type)
        obj.__init__(*args)
        return obj
    code, _ = _element(typecode_or_type)
    if len(args) > 1:
        raise TypeError('function takes at most 1 argument (%d given)' % len(args))
    obj = SharedValue.__new__(SharedValue)
    obj._init(code, 1, _procpy.SharedBuffer(_size_of(code)))
    if args:
        obj.value = args[0]
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    '''Returns a ctypes-like array allocated from shared memory'''
    if _is_ctype(typecode_or_type):
        if isinstance(size_or_initializer, int):
            return _new_ctype(typecode_or_type, size_or_initializer)
        init = list(size_or_initializer)
        obj = _new_ctype(typecode_or_type, len(init))
        obj.__init__(*init)
        return obj
    code, _ = _element(typecode_or_type)
    if isinstance(size_or_initializer, int):
        length, init = size_or_initializer, None
        if length < 0:
            raise ValueError('Array length must be >= 0, not %d' % length)
    else:
        init = list(size_or_initializer) if not isinstance(size_or_initializer, (bytes, str)) \
            else size_or_initializer
        length = len(init)
    obj = SharedArray.__new__(SharedArray)
    obj._init(code, length, _procpy.SharedBuffer(_size_of(code) * length))
    if init is not None:
        obj[:] = init
    return obj


def Value(typecode_or_type, *args, lock=True, ctx=None):
    '''Return a synchronization wrapper for a Value'''
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    if lock in (True, None):
        ctx = ctx or context._default_context.get_context()
        lock = ctx.RLock()
    if not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock, ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    '''Return a synchronization wrapper for a RawArray'''
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    if lock in (True, None):
        ctx = ctx or context._default_context.get_context()
        lock = ctx.RLock()
    if not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock, ctx=ctx)


def copy(obj):
    '''A new shared object with the same type and contents as `obj`.'''
    if isinstance(obj, SharedArray):
        new = RawArray(obj._typecode, obj._length)
        new._mv[:] = obj._mv
        return new
    if not isinstance(obj, _Shared):
        import ctypes
        new = _new_ctype(type(obj))
        ctypes.pointer(new)[0] = obj
        return new
    new = RawValue(obj._typecode)
    new._mv[0] = obj._mv[0]
    return new


def synchronized(obj, lock=None, ctx=None):
    assert not isinstance(obj, SynchronizedBase), 'object already synchronized'
    ctx = ctx or context._default_context.get_context()
    if isinstance(obj, SharedArray):
        cls = SynchronizedString if obj._typecode == 'c' else SynchronizedArray
    elif isinstance(obj, _Shared):
        cls = Synchronized
    else:
        import ctypes
        if isinstance(obj, ctypes.Array):
            cls = SynchronizedArray
        else:
            cls = _synchronized_class(type(obj))
    return cls(obj, lock, ctx)


_class_cache = {}


def _field_property(name):
    def get(self):
        with self._lock:
            return getattr(self._obj, name)

    def set(self, value):
        with self._lock:
            setattr(self._obj, name, value)
    return property(get, set)


def _synchronized_class(cls):
    '''A wrapper class for a Structure: one locked property per field, as CPython's.'''
    try:
        return _class_cache[cls]
    except KeyError:
        d = {name: _field_property(name) for name, *_ in cls._fields_}
        scls = _class_cache[cls] = type('Synchronized' + cls.__name__, (SynchronizedBase,), d)
        return scls


def _rebuild_synchronized(cls, obj, lock):
    return cls(obj, lock)


class SynchronizedBase(object):

    def __init__(self, obj, lock=None, ctx=None):
        self._obj = obj
        if lock:
            self._lock = lock
        else:
            ctx = ctx or context._default_context.get_context()
            self._lock = ctx.RLock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __reduce__(self):
        context.assert_spawning(self)
        if type(self) in _class_cache.values():
            # Made at run time (one per Structure type): rebuilt from the object, as CPython's.
            return synchronized, (self._obj, self._lock)
        return _rebuild_synchronized, (type(self), self._obj, self._lock)

    def get_obj(self):
        return self._obj

    def get_lock(self):
        return self._lock

    def __repr__(self):
        return '<%s wrapper for %s>' % (type(self).__name__, self._obj)


class Synchronized(SynchronizedBase):

    @property
    def value(self):
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, v):
        with self._lock:
            self._obj.value = v


class SynchronizedArray(SynchronizedBase):

    def __len__(self):
        return len(self._obj)

    def __getitem__(self, i):
        with self._lock:
            return self._obj[i]

    def __setitem__(self, i, value):
        with self._lock:
            self._obj[i] = value

    def __getslice__(self, start, stop):
        with self._lock:
            return self._obj[start:stop]

    def __setslice__(self, start, stop, values):
        with self._lock:
            self._obj[start:stop] = values


class SynchronizedString(SynchronizedArray):

    @property
    def value(self):
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, v):
        with self._lock:
            self._obj.value = v

    @property
    def raw(self):
        with self._lock:
            return self._obj.raw

    @raw.setter
    def raw(self, v):
        with self._lock:
            self._obj.raw = v
