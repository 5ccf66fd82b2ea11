# The Process object model, with CPython 3.11's semantics and messages.
import itertools
import os
import _signal  # not `signal`: its enums cost ~9 ms to import in RustPython
import sys
from _weakref import ref as _ref

import _procpy

# procpy --trace (fixed for the life of the process).
_tracing = _procpy.trace_enabled()
if _tracing:
    import _procpy_trace as _trace

__all__ = ['BaseProcess', 'current_process', 'active_children', 'parent_process']

try:
    ORIGINAL_DIR = os.path.abspath(os.getcwd())
except OSError:
    ORIGINAL_DIR = None


def current_process():
    '''Return process object representing the current process'''
    return _current_process


def active_children():
    '''Return list of process objects corresponding to live child processes'''
    _cleanup()
    return list(_children)


def parent_process():
    '''Return process object representing the parent process'''
    return _parent_process


def _cleanup():
    # Forget children that have finished (they were waited for by poll()).
    for p in list(_children):
        if p._popen.poll() is not None:
            _children.discard(p)


class BaseProcess(object):
    '''Process objects represent activity that is run in a separate process.'''

    def _Popen(self):
        raise NotImplementedError

    def __init__(self, group=None, target=None, name=None, args=(), kwargs={},
                 *, daemon=None):
        assert group is None, 'group argument must be None for now'
        count = next(_process_counter)
        self._identity = _current_process._identity + (count,)
        self._config = _current_process._config.copy()
        self._parent_pid = os.getpid()
        self._parent_name = _current_process.name
        self._popen = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs)
        self._name = name or type(self).__name__ + '-' + \
            ':'.join(str(i) for i in self._identity)
        if daemon is not None:
            self.daemon = daemon

    def _check_closed(self):
        if self._closed:
            raise ValueError("process object is closed")

    def run(self):
        '''Method to be run in sub-process; can be overridden in sub-class'''
        if self._target:
            self._target(*self._args, **self._kwargs)

    def start(self):
        '''Start child process'''
        self._check_closed()
        assert self._popen is None, 'cannot start a process twice'
        assert self._parent_pid == os.getpid(), \
            'can only start a process object created by current process'
        assert not _current_process._config.get('daemon'), \
            'daemonic processes are not allowed to have children'
        _cleanup()
        self._popen = self._Popen(self)
        self._sentinel = self._popen.sentinel
        # The child has its own copies; drop ours so they can be collected.
        del self._target, self._args, self._kwargs
        _children.add(self)
        _dangling.add(self)

    def terminate(self):
        '''Terminate process; sends SIGTERM signal'''
        self._check_closed()
        self._popen.terminate()

    def kill(self):
        '''Terminate process; sends SIGKILL signal'''
        self._check_closed()
        self._popen.kill()

    def join(self, timeout=None):
        '''Wait until child process terminates'''
        self._check_closed()
        assert self._parent_pid == os.getpid(), 'can only join a child process'
        assert self._popen is not None, 'can only join a started process'
        res = self._popen.wait(timeout)
        if res is not None:
            _children.discard(self)

    def is_alive(self):
        '''Return whether process is alive'''
        self._check_closed()
        if self is _current_process:
            return True
        assert self._parent_pid == os.getpid(), 'can only test a child process'
        if self._popen is None:
            return False
        returncode = self._popen.poll()
        if returncode is None:
            return True
        _children.discard(self)
        return False

    def close(self):
        '''Close the Process object, releasing its resources.'''
        if self._popen is not None:
            if self._popen.poll() is None:
                raise ValueError("Cannot close a process while it is still running. "
                                 "You should first call join() or terminate().")
            self._popen.close()
            self._popen = None
            del self._sentinel
            _children.discard(self)
        self._closed = True

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, name):
        assert isinstance(name, str), 'name must be a string'
        self._name = name

    @property
    def daemon(self):
        '''Return whether process is a daemon'''
        return self._config.get('daemon', False)

    @daemon.setter
    def daemon(self, daemonic):
        assert self._popen is None, 'process has already started'
        self._config['daemon'] = daemonic

    @property
    def authkey(self):
        return self._config['authkey']

    @authkey.setter
    def authkey(self, authkey):
        self._config['authkey'] = AuthenticationString(authkey)

    @property
    def exitcode(self):
        '''Return exit code of process or `None` if it has yet to stop'''
        self._check_closed()
        if self._popen is None:
            return self._popen
        return self._popen.poll()

    @property
    def ident(self):
        '''Return identifier (PID) of process or `None` if it has yet to start'''
        self._check_closed()
        if self is _current_process:
            return os.getpid()
        return self._popen and self._popen.pid

    pid = ident

    @property
    def sentinel(self):
        '''Return a file descriptor that becomes "ready" when the child process terminates.'''
        self._check_closed()
        try:
            return self._sentinel
        except AttributeError:
            raise ValueError("process not started") from None

    def __repr__(self):
        exitcode = None
        if self is _current_process:
            status = 'started'
        elif self._closed:
            status = 'closed'
        elif self._parent_pid != os.getpid():
            status = 'unknown'
        elif self._popen is None:
            status = 'initial'
        else:
            exitcode = self._popen.poll()
            status = 'started' if exitcode is None else 'stopped'
        info = [type(self).__name__, 'name=%r' % self._name]
        if self._popen is not None:
            info.append('pid=%s' % self._popen.pid)
        info.append('parent=%s' % self._parent_pid)
        info.append(status)
        if exitcode is not None:
            exitcode = _exitcode_to_name.get(exitcode, exitcode)
            info.append('exitcode=%s' % exitcode)
        if self.daemon:
            info.append('daemon')
        return '<%s>' % ' '.join(info)

    def _bootstrap(self, parent_sentinel=None):
        '''Run in the child: become the current process, run(), report the exit code.'''
        from . import util, context
        global _current_process, _parent_process, _process_counter, _children
        try:
            if self._start_method is not None:
                context._force_start_method(self._start_method)
            _process_counter = itertools.count(1)
            _children = set()
            util._close_stdin()
            # A forked child owns none of its parent's finalizers, and resets fork-aware state.
            util._finalizer_registry.clear()
            util._run_after_forkers()
            _current_process = self
            if _tracing:
                _trace.process_name(self.name)
            _parent_process = _ParentProcess(self._parent_name, self._parent_pid, parent_sentinel)
            if (self.daemon or getattr(self, '_watch_parent', False)) and parent_sentinel is not None:
                # Daemons (pool workers among them) die with their parent, even a SIGKILLed one.
                _procpy.watch_parent(parent_sentinel)
            if _tracing:
                _trace.booted()
                run_name = _run_name(self)
                _trace.begin(run_name, 'process')
            try:
                self.run()
                exitcode = 0
            finally:
                if _tracing:
                    _trace.end(run_name, 'process')
                util._exit_function()
        except SystemExit as e:
            if e.code is None:
                exitcode = 0
            elif isinstance(e.code, int):
                exitcode = e.code
            else:
                sys.stderr.write(str(e.code) + '\n')
                exitcode = 1
        except:
            exitcode = 1
            import traceback
            sys.stderr.write('Process %s:\n' % self.name)
            traceback.print_exc()
        finally:
            try:
                # Only if the target used threads: importing threading is not free.
                if 'threading' in sys.modules:
                    sys.modules['threading']._shutdown()
            except Exception:
                pass
            util._flush_std_streams()
            if _tracing:
                _trace.exit(exitcode)
        return exitcode


def _run_name(p):
    '''The name of a child's run span (procpy --trace): its target, or Class.run.'''
    if type(p).run is not BaseProcess.run:
        return type(p).__qualname__ + '.run'
    t = p._target
    if t is None:
        return 'run'
    return getattr(t, '__qualname__', None) or getattr(t, '__name__', None) or type(t).__name__


class AuthenticationString(bytes):
    def __reduce__(self):
        from .context import get_spawning_popen
        if get_spawning_popen() is None:
            raise TypeError(
                'Pickling an AuthenticationString object is '
                'disallowed for security reasons'
            )
        return AuthenticationString, (bytes(self),)


class _MainProcess(BaseProcess):
    def __init__(self):
        self._identity = ()
        self._name = 'MainProcess'
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._config = {'authkey': AuthenticationString(_procpy.random_key()),
                        'semprefix': '/mp'}

    def close(self):
        pass


class _ParentProcess(BaseProcess):
    def __init__(self, name, pid, sentinel):
        self._identity = ()
        self._name = name
        self._pid = pid
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._sentinel = sentinel
        self._config = {}

    def is_alive(self):
        from .connection import wait
        return not wait([self._sentinel], timeout=0)

    @property
    def ident(self):
        return self._pid

    def join(self, timeout=None):
        from .connection import wait
        wait([self._sentinel], timeout=timeout)

    pid = ident


_parent_process = None
_current_process = _MainProcess()
_process_counter = itertools.count(1)
_children = set()


class _WeakSet(object):
    '''A set of weak references without callbacks (only as much of WeakSet as is used): a
    weakref callback that runs as the last reference goes in an ending thread panics
    RustPython 0.5, and a Pool's worker Processes go that way.'''

    def __init__(self, items=()):
        self._refs = {}
        self._prune_at = 64
        for item in items:
            self.add(item)

    def add(self, item):
        if len(self._refs) >= self._prune_at:
            # Dead references go now and then, so a long-running program's set stays small.
            self._live()
            self._prune_at = 2 * len(self._refs) + 64
        self._refs[id(item)] = _ref(item)

    def discard(self, item):
        r = self._refs.get(id(item))
        if r is not None and r() is item:
            del self._refs[id(item)]

    def _live(self):
        out = []
        for key, r in list(self._refs.items()):
            obj = r()
            if obj is None:
                self._refs.pop(key, None)
            else:
                out.append(obj)
        return out

    def __iter__(self):
        return iter(self._live())

    def __len__(self):
        return len(self._live())

    def __contains__(self, item):
        r = self._refs.get(id(item))
        return r is not None and r() is item

    def copy(self):
        return _WeakSet(self._live())

    def clear(self):
        self._refs.clear()

    def __repr__(self):
        return '<multiprocessing.process._WeakSet of %d>' % len(self)


# Every process started here that is still referenced (CPython's; its tests check for leaks).
_dangling = _WeakSet()
del _MainProcess

_exitcode_to_name = {}
for name, signum in list(_signal.__dict__.items()):
    if name[:3] == 'SIG' and '_' not in name:
        _exitcode_to_name[-signum] = f'-{name}'
del name, signum
