"""The Python half of an embedding worker (see interpreter/src/worker.rs): module sources
registered by the host, the `host` module of host functions, calls by "module:function"."""

import sys
import _procpy
import _procpy_embed_native as _native

_targets = {}


class _SourceFinder:
    """Imports the modules the host registered from strings; a dotted name makes its parents
    packages (empty ones unless registered too)."""

    def __init__(self, sources):
        self.sources = {name: (code, filename) for name, code, filename in sources}

    def find_spec(self, fullname, path=None, target=None):
        is_pkg = any(k.startswith(fullname + '.') for k in self.sources)
        if fullname not in self.sources and not is_pkg:
            return None
        import importlib.util
        return importlib.util.spec_from_loader(fullname, self, is_package=is_pkg)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        entry = self.sources.get(module.__name__)
        if entry is not None:
            code, filename = entry
            module.__file__ = filename
            exec(compile(code, filename, 'exec'), module.__dict__)


class HostError(RuntimeError):
    """A host function returned an error; the message is the host's."""


# Users import it from `host`; name it there in reprs and error types.
HostError.__module__ = 'host'


def _host_function(name):
    def call(*args):
        ok, value = _native.host_call(name, args)
        if not ok:
            raise HostError(value)
        return value
    call.__name__ = call.__qualname__ = name
    call.__module__ = 'host'
    return call


def _setup(sys_path, sources, host_fns):
    for p in reversed(sys_path):
        sys.path.insert(0, p)
    if sources:
        sys.meta_path.insert(0, _SourceFinder(sources))
    import types
    host = types.ModuleType('host', 'Functions of the host application.')
    host.HostError = HostError
    for name in host_fns:
        setattr(host, name, _host_function(name))
    sys.modules['host'] = host


def _resolve(target):
    func = _targets.get(target)
    if func is None:
        module, sep, qualname = target.partition(':')
        if not sep or not module or not qualname:
            raise ValueError("target %r is not of the form 'module:function'" % (target,))
        import importlib
        func = importlib.import_module(module)
        for part in qualname.split('.'):
            func = getattr(func, part)
        _targets[target] = func
    return func


def _call(target, args):
    return _procpy.dumps(_resolve(target)(*_procpy.loads(args)))


def _map_chunk(target, items):
    """One chunk of a host-side map: the function over each item, results in order."""
    func = _resolve(target)
    return [func(x) for x in items]


def _describe(exc):
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == 'builtins' else '%s.%s' % (cls.__module__, cls.__qualname__)
    try:
        import traceback
        # Our own `_call` frame is not the user's business.
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code is _call.__code__:
            tb = tb.tb_next
        text = ''.join(traceback.format_exception(cls, exc, tb))
    except Exception:
        text = '%s: %s\n' % (name, exc)
    return name, str(exc), text
