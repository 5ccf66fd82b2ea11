"""The Python half of an embedding worker (see interpreter/src/worker.rs): module sources
registered by the host, the `host` module of host functions, calls by "module:function"."""

import sys
import _procpy
try:
    import _procpy_embed_native as _native
except ImportError:
    # A cluster worker (`procpy worker`) imports this module for `_remote_call`: it has no host.
    _native = None

_targets = {}
# The pool every call goes to when the host set `Builder::cluster` (see `_setup`).
_cluster = None


class _SourceFinder:
    """Imports the modules the host registered from strings; a dotted name makes its parents
    packages (empty ones unless registered too)."""

    def __init__(self, sources, lines=False):
        self.sources = {name: (code, filename) for name, code, filename in sources}
        # On a cluster worker the files are not there: tracebacks read the lines from memory.
        self.lines = lines

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
            if self.lines and not filename.startswith('<'):
                import linecache
                text = code.decode('utf-8', 'replace') if isinstance(code, bytes) else code
                # No mtime: linecache.checkcache keeps the entry (the file is not here).
                linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
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


def _cluster_host_function(name):
    why = ("host function %s() cannot be called on a cluster worker: host functions run in the "
           "host process, and this call runs on another machine; call it in the host and pass "
           "its result as an argument" % name)

    def call(*args):
        raise HostError(why)
    call.__name__ = call.__qualname__ = name
    call.__module__ = 'host'
    return call


def _host_module(host_fns, make):
    import types
    host = types.ModuleType('host', 'Functions of the host application.')
    host.HostError = HostError
    for name in host_fns:
        setattr(host, name, make(name))
    sys.modules['host'] = host


def _setup(sys_path, sources, host_fns, cluster=None):
    for p in reversed(sys_path):
        sys.path.insert(0, p)
    if sources:
        sys.meta_path.insert(0, _SourceFinder(sources))
    _host_module(host_fns, _host_function)
    if cluster is not None:
        _start_cluster(cluster, sys_path, sources, host_fns)


# What `module_path` may ship to a cluster: more is a mistake (a home directory, a venv).
_MAX_SHIPPED_FILES = 2000
_MAX_SHIPPED_BYTES = 64 << 20


def _path_sources(sys_path):
    """The modules under the `module_path` directories, as `_SourceFinder` entries, so that the
    cluster's workers (which have no copy of them) import what this worker would."""
    import os
    entries, total = [], 0
    # Later entries win in `_SourceFinder`: the first directory on sys.path must come last.
    for top in reversed(sys_path):
        top = os.path.abspath(top)
        for root, dirs, files in os.walk(top):
            rel = os.path.relpath(root, top)
            parts = [] if rel == '.' else rel.split(os.sep)
            # Only directories that can be packages; sorted, so the bundle is the same each time.
            dirs[:] = sorted(d for d in dirs if d.isidentifier())
            for f in sorted(files):
                if not f.endswith('.py') or not f[:-3].isidentifier():
                    continue
                name = '.'.join(parts if f == '__init__.py' else parts + [f[:-3]])
                if not name:
                    continue
                path = os.path.join(root, f)
                with open(path, 'rb') as fh:
                    code = fh.read()
                total += len(code)
                entries.append((name, code, path))
                if len(entries) > _MAX_SHIPPED_FILES or total > _MAX_SHIPPED_BYTES:
                    raise ValueError(
                        "module_path %r holds more than %d modules or %d MiB of them: too much to "
                        "ship to the cluster with every job; give a directory of just the modules "
                        "the calls need" % (top, _MAX_SHIPPED_FILES, _MAX_SHIPPED_BYTES >> 20))
    return entries


def _start_cluster(cluster, sys_path, sources, host_fns):
    global _cluster
    url, key = cluster
    from multiprocessing.cluster import ClusterPool
    # The explicit sources win over the directories' modules, as `_SourceFinder` does here.
    shipped = _path_sources(sys_path) + [tuple(s) for s in sources]
    # One call at a time comes from the host to this worker: one job with one task in flight.
    _cluster = ClusterPool(1, initializer=_remote_setup, initargs=(shipped, list(host_fns)),
                           url=url, key=key)


def _remote_setup(sources, host_fns):
    """Once per cluster worker process of the job: the engine's modules, imported from memory,
    and a `host` module whose functions say why they cannot run there."""
    if sources:
        sys.meta_path.insert(0, _SourceFinder(sources, lines=True))
    _host_module(host_fns, _cluster_host_function)


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


class _RemoteError(Exception):
    """A call's exception on a cluster worker, as `_describe` described it there."""

    def __init__(self, described):
        super().__init__(described[1])
        self.described = described


def _call(target, args):
    if _cluster is not None:
        ok, value = _cluster.apply(_remote_call, (target, args))
        if ok:
            return value
        raise _RemoteError(value)
    return _procpy.dumps(_resolve(target)(*_procpy.loads(args)))


def _remote_call(target, args):
    """A host's call on a cluster worker: the result's bytes, or the exception described as the
    host's own worker would describe it (name, message, traceback from the user's frame on)."""
    try:
        return True, _procpy.dumps(_resolve(target)(*_procpy.loads(args)))
    except (Exception, SystemExit) as e:
        return False, _describe(e)


def _map_chunk(target, items):
    """One chunk of a host-side map: the function over each item, results in order."""
    func = _resolve(target)
    return [func(x) for x in items]


def _describe(exc):
    if isinstance(exc, _RemoteError):
        return exc.described
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == 'builtins' else '%s.%s' % (cls.__module__, cls.__qualname__)
    try:
        import traceback
        # Our own `_call` frame is not the user's business.
        tb = exc.__traceback__
        if _cluster is not None and tb is not None and tb.tb_frame.f_code is _call.__code__:
            # Raised by the cluster pool (a WorkerLostError, a lost job): its frames are the
            # pool's, not the user's.
            tb = None
        elif tb is not None and tb.tb_frame.f_code in (_call.__code__, _remote_call.__code__):
            tb = tb.tb_next
        text = ''.join(traceback.format_exception(cls, exc, tb))
    except Exception:
        text = '%s: %s\n' % (name, exc)
    return name, str(exc), text
