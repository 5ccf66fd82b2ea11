#!/usr/bin/env python3
"""Run CPython 3.11's own multiprocessing test suite (test/_test_multiprocessing.py) for one
start method, under whatever interpreter runs this script (procpy or python3), and summarize.

    procpy  tests/cpython_suite/run_suite.py fork [--json out.json] [--quick] [...]
    python3 tests/cpython_suite/run_suite.py fork            # CPython baseline, same runner

How it works
------------
* A supervisor (this script, normal mode) lists the test ids in a worker subprocess, then runs
  them in a worker subprocess (same interpreter, `--worker`), one test after another in a
  single unittest suite, so module and class fixtures behave as under `unittest`.
* The worker appends one JSON line per event (test start/end, fixture start/end) to a results
  file. The supervisor watches it: if nothing happens for `--timeout` seconds the worker's
  process group is killed, the test in progress counts as `hung`, and a fresh worker continues
  with the next test. A worker that dies mid-test counts the test as `crash` and also resumes.
  Every process of a run carries a marker in its environment; leftovers (grandchildren that
  left the process group, fork servers) are killed by pid after each worker.
* The `test` package: CPython's Lib/test directory is exposed to the interpreter through a
  temporary directory holding only a `test` package whose __init__ appends CPython's Lib/test
  to its __path__ (plus the generated per-method module), so RustPython's frozen stdlib keeps
  precedence for everything else. The same __init__ installs the import hook that applies the
  shims below, so they also apply in spawn/forkserver children and in fresh interpreters the
  tests start. Under CPython, the interpreter's own `test` package is used.
* The generated module `_mp_suite_<method>` does what CPython's test_multiprocessing_<method>
  does: `install_tests_in_module_dict(globals(), method)`. It is importable by name, so spawn
  and forkserver children can find the test classes.

Compatibility shims (default; `--strict` turns them off)
-------------------------------------------------------
Under procpy, the test module cannot even be imported as is (it needs multiprocessing.heap,
multiprocessing.managers, _multiprocessing's semaphores at import time, and setUpModule needs
multiprocessing.RLock). Strict mode reports exactly that. The default mode applies a few shims
so that every test gets to run and report for itself; each shim is applied only if the
unshimmed step actually fails (so under CPython none is applied), and the run prints which
ones were:
  * `test.support.skip_if_broken_multiprocessing_synchronize()` becomes a no-op if it raises
    something other than SkipTest;
  * a multiprocessing submodule the test module imports at top level that fails to import is
    replaced by a stub whose classes raise NotImplementedError when used;
  * multiprocessing.process._dangling (a CPython-private WeakSet that every class fixture
    snapshots) is set to an empty WeakSet if absent;
  * names the module reads while defining its classes (ProcessesMixin's `Lock =
    staticmethod(multiprocessing.Lock)` etc., `util.abstract_sockets_supported`) get
    placeholders for the duration of the import only; calling one raises NotImplementedError;
  * if setUpModule fails, its remaining steps (start method, temp dir, logger level) are done
    one by one and the failure is reported as a note, instead of erroring every test.
No shim makes a test pass: tests that use a stubbed or missing feature fail or error.
"""

import argparse
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

METHODS = ('fork', 'spawn', 'forkserver')
HERE = os.path.dirname(os.path.abspath(__file__))
STATUSES = ('pass', 'fail', 'error', 'skip', 'hung', 'crash', 'not_run')
MARKER_VAR = 'PROCPY_CPYTHON_SUITE_MARKER'
RESULTS_VAR = 'PROCPY_CPYTHON_SUITE_RESULTS'
COMPAT_VAR = 'PROCPY_CPYTHON_SUITE_COMPAT'

# `--quick`: the classes that exercise what procpy implements (Process, Queue, Pipe/Connection,
# wait, start methods, misc. API), for the processes flavour only.
QUICK_CLASSES = [
    'WithProcessesTestProcess',
    'WithProcessesTestSubclassingProcess',
    'WithProcessesTestQueue',
    'WithProcessesTestConnection',
    'WithProcessesTestPoll',
    'WithProcessesTestPollEintr',
    'WithProcessesTestPicklingConnections',
    'WithProcessesTestLogging',
    'TestWait',
    'TestStartMethod',
    'TestSimpleQueue',
    'MiscTestCase',
    'TestInvalidHandle',
    'TestNoForkBomb',
    'TestCloseFds',
    'TestIgnoreEINTR',
    'TestFlags',
    'TestInternalDecorators',
    'TestStdinBadfiledescriptor',
]


def is_procpy():
    return 'RustPython' in sys.version


# ----------------------------------------------------------------------------------------------
# Shims (used by the generated module, in the worker and in spawn/forkserver children)
# ----------------------------------------------------------------------------------------------

APPLIED = []          # notes about shims applied in this process


def _note(msg):
    APPLIED.append(msg)
    path = os.environ.get(RESULTS_VAR)
    if path:
        _emit_to(path, {'ev': 'note', 'msg': msg})


def _make_stub_module(name, err):
    import types

    mod = types.ModuleType(name)
    mod.__file__ = '<run_suite stub for %s>' % name
    why = '%s is not available (stubbed by run_suite.py: import failed: %s)' % (name, err)

    class _StubMeta(type):
        def __getattr__(cls, attr):
            if attr.startswith('__'):
                raise AttributeError(attr)
            if attr == 'register':          # BaseManager.register() runs at import time
                return classmethod(lambda c, *a, **k: None).__get__(None, cls)
            raise NotImplementedError('%s.%s: %s' % (cls.__name__, attr, why))

    def stub_class(attr, base=object):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(why)
        return _StubMeta(attr, (base,), {'__init__': __init__, '__module__': name})

    def __getattr__(attr):
        if attr.startswith('__'):
            raise AttributeError(attr)
        if attr.endswith('Error'):
            value = type(attr, (Exception,), {'__module__': name})
        else:
            value = stub_class(attr)
        setattr(mod, attr, value)
        return value

    mod.__getattr__ = __getattr__
    mod.__procpy_suite_stub__ = why
    return mod


def prepare_import(compat):
    """Called by the generated module before it imports test._test_multiprocessing."""
    if not compat:
        return
    import importlib
    import unittest
    from test import support

    orig = support.skip_if_broken_multiprocessing_synchronize
    try:
        orig()
    except unittest.SkipTest as e:
        # procpy has no multiprocessing.synchronize yet (and never loads RustPython's): let the
        # tests run and report for themselves instead of skipping the whole module.
        if 'multiprocessing.synchronize' not in str(e):
            raise
        support.skip_if_broken_multiprocessing_synchronize = lambda: None
        _note('shim: test.support.skip_if_broken_multiprocessing_synchronize() skipped the module (%s); '
              'made a no-op' % _first_line_exc(e))
    except Exception as e:
        support.skip_if_broken_multiprocessing_synchronize = lambda: None
        _note('shim: test.support.skip_if_broken_multiprocessing_synchronize() raised %s; made a no-op'
              % _first_line_exc(e))
    # The submodules _test_multiprocessing imports unconditionally at top level.
    for name in ('multiprocessing.connection', 'multiprocessing.dummy', 'multiprocessing.heap',
                 'multiprocessing.managers', 'multiprocessing.pool', 'multiprocessing.queues',
                 'multiprocessing.resource_tracker'):
        try:
            importlib.import_module(name)
        except Exception as e:
            sys.modules.pop(name, None)
            stub = _make_stub_module(name, _first_line_exc(e))
            sys.modules[name] = stub
            parent, _, child = name.rpartition('.')
            setattr(sys.modules[parent], child, stub)
            _note('shim: import %s failed (%s); replaced by a stub' % (name, _first_line_exc(e)))
    # Names the test module reads while its classes are being defined (ProcessesMixin, skip
    # decorators). Missing ones are provided only for the duration of the import.
    import multiprocessing
    from multiprocessing import util
    for attr in _MP_API:
        if not hasattr(multiprocessing, attr):
            _TEMPORARY.append((multiprocessing, attr))
            setattr(multiprocessing, attr, _missing_api('multiprocessing.' + attr))
    if not hasattr(util, 'abstract_sockets_supported'):
        # CPython computes this at import; it is True on Linux.
        _TEMPORARY.append((util, 'abstract_sockets_supported'))
        util.abstract_sockets_supported = sys.platform == 'linux'
    # Test-harness bookkeeping (BaseMixin.setUpClass and setUpModule snapshot it to report
    # leaked processes): CPython's private WeakSet of started processes.
    if not hasattr(multiprocessing.process, '_dangling'):
        import weakref
        multiprocessing.process._dangling = weakref.WeakSet()
        _note('shim: multiprocessing.process._dangling (CPython-private registry the test fixtures '
              'snapshot) is absent; set to an empty WeakSet, so leaked-process warnings are blind')
    if _TEMPORARY:
        _note('shim: absent during the test module\'s import, so given placeholders that raise '
              'NotImplementedError when called: %s' % ', '.join(
                  '%s.%s' % (m.__name__, a) for m, a in _TEMPORARY
                  if a != 'abstract_sockets_supported') +
              ('; multiprocessing.util.abstract_sockets_supported read as True (as CPython on Linux)'
               if any(a == 'abstract_sockets_supported' for _, a in _TEMPORARY) else ''))


# The public API of CPython 3.11's multiprocessing module.
_MP_API = ['Array', 'AuthenticationError', 'Barrier', 'BoundedSemaphore', 'BufferTooShort',
           'Condition', 'Event', 'JoinableQueue', 'Lock', 'Manager', 'Pipe', 'Pool', 'Process',
           'ProcessError', 'Queue', 'RLock', 'RawArray', 'RawValue', 'Semaphore', 'SimpleQueue',
           'TimeoutError', 'Value', 'active_children', 'allow_connection_pickling', 'cpu_count',
           'current_process', 'freeze_support', 'get_all_start_methods', 'get_context',
           'get_logger', 'get_start_method', 'log_to_stderr', 'parent_process', 'reducer',
           'set_executable', 'set_forkserver_preload', 'set_start_method']
_TEMPORARY = []


def _missing_api(qualname):
    def missing(*args, **kwargs):
        raise NotImplementedError('%s is not available (placeholder from run_suite.py)' % qualname)
    missing.__name__ = missing.__qualname__ = qualname.rpartition('.')[2]
    return missing


def after_install(globs, method, compat):
    """Called by the generated module after install_tests_in_module_dict()."""
    if not compat:
        return
    _remove_temporary()
    orig_setup = globs['setUpModule']

    def setUpModule():
        import unittest
        try:
            orig_setup()
            return
        except unittest.SkipTest:
            raise
        except Exception as e:
            _note('shim: setUpModule raised %s; doing its remaining steps one by one'
                  % _first_line_exc(e))
        import multiprocessing
        from multiprocessing import util
        import test._test_multiprocessing as tm
        steps = [
            ('set_start_method', lambda: multiprocessing.set_start_method(method, force=True)),
            ('check_enough_semaphores', lambda: tm.check_enough_semaphores()),
            ('util.get_temp_dir', lambda: util.get_temp_dir()),
            ('get_logger().setLevel', lambda: multiprocessing.get_logger().setLevel(tm.LOG_LEVEL)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:
                if what == 'set_start_method':
                    raise
                _note('shim: setUpModule step %s raised %s; ignored' % (what, _first_line_exc(e)))

    globs['setUpModule'] = setUpModule


def _remove_temporary():
    while _TEMPORARY:
        mod, attr = _TEMPORARY.pop()
        try:
            delattr(mod, attr)
        except AttributeError:
            pass


class _ShimmingFinder:
    """A meta-path finder that applies the shims around any import of
    test._test_multiprocessing: in the worker, and in spawn and forkserver children, which
    import it by name to find the functions and classes a process object refers to."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != 'test._test_multiprocessing' or self.busy:
            return None
        import importlib.machinery
        self.busy = True
        try:
            prepare_import(True)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _CleanupLoader(spec.loader)
        return spec


class _CleanupLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            self.loader.exec_module(module)
        finally:
            _remove_temporary()

    def __getattr__(self, name):
        return getattr(self.loader, name)


def install_import_hook():
    """Idempotent per process (this file may be loaded both as __main__ and as `run_suite`)."""
    if os.environ.get(COMPAT_VAR) != '1':
        return
    if any(type(f).__name__ == '_ShimmingFinder' for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ShimmingFinder())


TEST_PACKAGE_INIT = '''\
# Generated by run_suite.py: the `test` package is CPython's Lib/test (%r). Every process that
# imports from it (the worker, spawn and forkserver children, interpreters the tests start with
# `sys.executable -c ...`) first gets the import hook that applies run_suite.py's shims.
__path__.append(%r)
import run_suite
run_suite.install_import_hook()
'''


MODULE_TEMPLATE = '''\
# Generated by run_suite.py: what CPython's test_multiprocessing_{method} does.
import run_suite as _run_suite
_run_suite.install_import_hook()
import test._test_multiprocessing as _tm
# CPython's fork-server preload names the module holding the tests (PRELOAD has
# 'test.test_multiprocessing_forkserver'), so its children find the test classes imported; here
# they live in this module, which would otherwise be imported again by every child.
_tm.PRELOAD.append(__name__)
_tm.install_tests_in_module_dict(globals(), {method!r})
_run_suite.after_install(globals(), {method!r}, {compat!r})
'''


# ----------------------------------------------------------------------------------------------
# Worker
# ----------------------------------------------------------------------------------------------

def _emit_to(path, record):
    record.setdefault('pid', os.getpid())
    record.setdefault('t', time.time())
    line = (json.dumps(record) + '\n').encode('utf-8', 'backslashreplace')
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _first_line_exc(e):
    text = ''.join(traceback.format_exception_only(type(e), e)).strip()
    return text.splitlines()[0] if text else repr(e)


def _reason(err):
    exc_type, exc_value, _ = err
    try:
        text = ''.join(traceback.format_exception_only(exc_type, exc_value)).strip()
    except Exception:
        text = repr(exc_value)
    return text.splitlines()[0] if text else exc_type.__name__


def worker_main(args):
    import unittest

    results = args.results
    emit = lambda **kw: _emit_to(results, kw)
    # The suite expects Python's default SIGINT handling (several tests send SIGINT and expect
    # KeyboardInterrupt). A worker started from a background shell job inherits SIGINT ignored,
    # which Python keeps, and so would every child; restore the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    worker_pid = os.getpid()
    modname = '_mp_suite_' + args.method
    try:
        module = __import__(modname)
    except BaseException as e:
        emit(ev='import_error', reason=_first_line_exc(e), tb=traceback.format_exc())
        return 3

    if args.list:
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
        ids = []

        def walk(s):
            for t in s:
                if isinstance(t, unittest.TestSuite):
                    walk(t)
                else:
                    ids.append(t.id())
        walk(suite)
        emit(ev='list', ids=ids)
        return 0

    with open(args.tests) as f:
        ids = [line.strip() for line in f if line.strip()]

    # Events around class and module fixtures, so a hang there is attributed correctly.
    def wrap_fixture(owner, name, label):
        orig = getattr(owner, name)

        def wrapper(*a):
            emit(ev='fixture_start', what=label)
            try:
                orig()
            finally:
                if os.getpid() == worker_pid:
                    emit(ev='fixture_end', what=label)
        return wrapper

    seen = set()
    for tid in ids:
        clsname = tid.split('.')[1]
        if clsname in seen:
            continue
        seen.add(clsname)
        cls = getattr(module, clsname)
        for fx in ('setUpClass', 'tearDownClass'):
            setattr(cls, fx, classmethod(lambda c, _w=wrap_fixture(cls, fx, '%s (%s)' % (fx, clsname)): _w()))
    for fx in ('setUpModule', 'tearDownModule'):
        if hasattr(module, fx):
            setattr(module, fx, wrap_fixture(module, fx, '%s (%s)' % (fx, modname)))

    class Result(unittest.TestResult):
        def __init__(self):
            super().__init__()
            self.state = {}

        def _foreign(self, err=None):
            # A forked child that came back into the test loop: report it, never count it.
            if os.getpid() != worker_pid:
                try:
                    emit(ev='foreign', msg='a child process (pid %d, parent %d) returned into the '
                         'unittest loop' % (os.getpid(), os.getppid()),
                         stack=''.join(traceback.format_stack()[-12:]),
                         err=''.join(traceback.format_exception(*err))[-4000:] if err else '')
                finally:
                    os._exit(70)

        def _children(self):
            try:
                import multiprocessing
                return {p.pid: p for p in multiprocessing.active_children()}
            except Exception:
                return {}

        def startTest(self, test):
            self._foreign()
            super().startTest(test)
            self.state[test.id()] = {'status': 'pass', 'reason': '', 'tb': ''}
            self.children_before = self._children()
            emit(ev='start', id=test.id())

        def _set(self, test, status, reason, tb=''):
            tid = test.id()
            st = self.state.get(tid)
            if st is None:                 # fixture error (_ErrorHolder)
                emit(ev='fixture', id=tid, status=status, reason=reason, tb=tb)
                return
            rank = {'pass': 0, 'skip': 1, 'fail': 2, 'error': 3}
            if rank[status] >= rank[st['status']]:
                st.update(status=status, reason=reason, tb=tb)

        def addSuccess(self, test):
            self._foreign()
            super().addSuccess(test)

        def addError(self, test, err):
            self._foreign(err)
            super().addError(test, err)
            self._set(test, 'error', _reason(err), self._exc_info_to_string(err, test)[-8000:])

        def addFailure(self, test, err):
            self._foreign(err)
            super().addFailure(test, err)
            self._set(test, 'fail', _reason(err), self._exc_info_to_string(err, test)[-8000:])

        def addSubTest(self, test, subtest, err):
            self._foreign()
            super().addSubTest(test, subtest, err)
            if err is not None:
                status = 'fail' if issubclass(err[0], test.failureException) else 'error'
                self._set(test, status, '%s: %s' % (subtest._subDescription(), _reason(err)),
                          self._exc_info_to_string(err, test)[-8000:])

        def addSkip(self, test, reason):
            self._foreign()
            super().addSkip(test, reason)
            self._set(test, 'skip', str(reason).splitlines()[0] if reason else '')

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, 'fail', 'unexpected success')

        def stopTest(self, test):
            self._foreign()
            super().stopTest(test)
            st = self.state.pop(test.id(), None)
            if st is not None:
                # Processes this test started that are still running (they would be joined,
                # or terminated if daemonic, when the worker exits).
                left = [p for pid, p in self._children().items()
                        if pid not in getattr(self, 'children_before', {})]
                st['left_running'] = ['%s pid=%s daemon=%s' % (p.name, p.pid, p.daemon)
                                      for p in left]
                emit(ev='end', id=test.id(), **st)

    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for tid in ids:
        suite.addTests(loader.loadTestsFromName(tid.split('.', 1)[1], module))
    result = Result()
    suite.run(result)
    if os.getpid() != worker_pid:
        os._exit(70)
    # What could keep this interpreter from exiting: live children (joined at exit unless
    # daemonic) and non-daemon threads.
    lingering = []
    try:
        import multiprocessing
        import threading
        for p in multiprocessing.active_children():
            target = getattr(p, '_target', None)
            lingering.append('process %s pid=%s daemon=%s target=%s' % (
                p.name, p.pid, p.daemon, getattr(target, '__qualname__', target)))
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                lingering.append('non-daemon thread %s' % t.name)
    except Exception as e:
        lingering.append('(could not list: %s)' % _first_line_exc(e))
    emit(ev='done', lingering=lingering)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


# ----------------------------------------------------------------------------------------------
# Supervisor
# ----------------------------------------------------------------------------------------------

def find_cpython_test_dir(explicit):
    """Where CPython's Lib/test is, or None when this interpreter has its own `test` package."""
    if explicit:
        return os.path.abspath(explicit)
    if os.environ.get('PROCPY_CPYTHON_TEST_DIR'):
        return os.path.abspath(os.environ['PROCPY_CPYTHON_TEST_DIR'])
    if not is_procpy():
        return None
    out = subprocess.run(
        ['python3', '-c', 'import os, test; print(os.path.dirname(test.__file__))'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
        env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    path = out.stdout.strip()
    if out.returncode != 0 or not os.path.isfile(os.path.join(path, '_test_multiprocessing.py')):
        sys.exit('run_suite.py: cannot find CPython 3.11\'s Lib/test (python3 gave %r); '
                 'pass --cpython-test-dir or set PROCPY_CPYTHON_TEST_DIR' % path)
    return path


def kill_marked(marker):
    """Kill every process whose environment carries `marker` (except ourselves)."""
    needle = ('%s=%s' % (MARKER_VAR, marker)).encode()
    killed = []
    for _ in range(3):
        found = False
        for entry in os.listdir('/proc'):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open('/proc/%s/environ' % entry, 'rb') as f:
                    env = f.read().split(b'\0')
            except OSError:
                continue
            if needle in env:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                    killed.append(int(entry))
                    found = True
                except OSError:
                    pass
        if not found:
            break
        time.sleep(0.2)
    return killed


class Runner:
    def __init__(self, args):
        self.args = args
        self.method = args.method
        self.workdir = tempfile.mkdtemp(prefix='procpy_suite_%s_' % args.method)
        self.gendir = os.path.join(self.workdir, 'path')
        os.mkdir(self.gendir)
        test_dir = find_cpython_test_dir(args.cpython_test_dir)
        self.test_dir = test_dir
        if test_dir:
            os.mkdir(os.path.join(self.gendir, 'test'))
            with open(os.path.join(self.gendir, 'test', '__init__.py'), 'w') as f:
                f.write(TEST_PACKAGE_INIT % (test_dir, test_dir))
        with open(os.path.join(self.gendir, '_mp_suite_%s.py' % self.method), 'w') as f:
            f.write(MODULE_TEMPLATE.format(method=self.method, compat=not args.strict))
        self.log_path = args.log or os.path.join(self.workdir, 'worker.log')
        open(self.log_path, 'w').close()
        self.marker = '%d-%d' % (os.getpid(), int(time.time() * 1000))
        self.results = {}          # id -> {'status', 'reason', 'tb', 'secs'}
        self.fixture_events = []   # fixture errors/skips/hangs
        self.notes = []
        self.foreign = []
        self.import_error = None
        self.lingering = []
        self.workers_started = 0

    def env(self, results_path):
        env = dict(os.environ)
        pp = [self.gendir, HERE]
        env['PYTHONPATH'] = os.pathsep.join(pp)
        env[MARKER_VAR] = self.marker
        env[RESULTS_VAR] = results_path
        env[COMPAT_VAR] = '0' if self.args.strict else '1'
        env['PYTHONDONTWRITEBYTECODE'] = '1'
        env.pop('PROCPY_START_METHOD', None)
        return env

    def start_worker(self, extra, results_path):
        cmd = [sys.executable, os.path.abspath(__file__), self.method, '--worker',
               '--results', results_path] + (['--strict'] if self.args.strict else []) + extra
        log = open(self.log_path, 'ab')
        log.write(('\n===== worker: %s\n' % ' '.join(cmd)).encode())
        log.flush()
        self.workers_started += 1
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=self.env(results_path), cwd=self.workdir,
                                start_new_session=True)
        log.close()
        return proc

    def stop_worker(self, proc):
        try:
            os.kill(-proc.pid, signal.SIGKILL)      # the worker leads its own process group
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self):
        killed = kill_marked(self.marker)
        if killed:
            self.notes.append('killed %d leftover process(es) of a worker' % len(killed))

    def list_tests(self):
        path = os.path.join(self.workdir, 'list.jsonl')
        proc = self.start_worker(['--list'], path)
        try:
            proc.wait(timeout=max(120, self.args.timeout))
        except subprocess.TimeoutExpired:
            self.stop_worker(proc)
        self.cleanup()
        for rec in read_events(path):
            if rec['ev'] == 'list':
                return rec['ids']
            if rec['ev'] == 'import_error':
                self.import_error = rec
            if rec['ev'] == 'note' and rec['msg'] not in self.notes:
                self.notes.append(rec['msg'])
        if self.import_error is None:
            self.import_error = {'reason': 'listing worker exited with %s without a list; see %s'
                                           % (proc.returncode, self.log_path), 'tb': ''}
        return None

    def run(self, ids):
        order = list(ids)
        pending = list(ids)
        hangs_per_class = {}
        attempt = 0
        while pending:
            attempt += 1
            tests_path = os.path.join(self.workdir, 'tests-%d.txt' % attempt)
            results_path = os.path.join(self.workdir, 'results-%d.jsonl' % attempt)
            with open(tests_path, 'w') as f:
                f.write('\n'.join(pending) + '\n')
            proc = self.start_worker(['--tests', tests_path], results_path)
            worker_pid = proc.pid
            offset = 0
            buf = b''
            current = None          # test in progress
            current_fixture = None
            started_at = {}
            last_event = time.time()
            done = False
            outcome = None
            while True:
                rc = proc.poll()
                try:
                    with open(results_path, 'rb') as f:
                        f.seek(offset)
                        chunk = f.read()
                except OSError:
                    chunk = b''
                offset += len(chunk)
                buf += chunk
                *lines, buf = buf.split(b'\n')
                for line in lines:
                    try:
                        rec = json.loads(line.decode('utf-8', 'replace'))
                    except ValueError:
                        continue
                    last_event = time.time()
                    ev = rec['ev']
                    if ev == 'note':
                        if rec['msg'] not in self.notes:
                            self.notes.append(rec['msg'])
                        continue
                    if ev == 'foreign':
                        self.foreign.append(dict(rec, during=current))
                        continue
                    if rec.get('pid') != worker_pid:
                        self.foreign.append({'msg': 'event from pid %s: %s' % (rec.get('pid'), ev),
                                             'during': current})
                        continue
                    if ev == 'start':
                        current = rec['id']
                        started_at[current] = rec['t']
                    elif ev == 'end':
                        self.results[rec['id']] = {
                            'status': rec['status'], 'reason': rec['reason'], 'tb': rec['tb'],
                            'secs': round(rec['t'] - started_at.get(rec['id'], rec['t']), 2),
                            'left_running': rec.get('left_running') or []}
                        if rec['id'] in pending:
                            pending.remove(rec['id'])
                        current = None
                    elif ev == 'fixture_start':
                        current_fixture = rec['what']
                    elif ev == 'fixture_end':
                        current_fixture = None
                    elif ev == 'fixture':
                        fx = {'what': rec['id'], 'status': rec['status'],
                              'reason': rec['reason'], 'tb': rec['tb']}
                        if not any(f['what'] == fx['what'] and f['reason'] == fx['reason']
                                   for f in self.fixture_events):
                            self.fixture_events.append(fx)
                    elif ev == 'import_error':
                        self.import_error = rec
                    elif ev == 'done':
                        done = True
                        self.lingering = rec.get('lingering') or []
                if rc is not None:
                    # Drain what is left, then decide.
                    if chunk:
                        continue
                    outcome = 'exit'
                    break
                limit = self.args.exit_timeout if done else self.args.timeout
                if time.time() - last_event > limit:
                    outcome = 'timeout'
                    self.stop_worker(proc)
                    break
                time.sleep(0.2)
            self.cleanup()
            if self.import_error is not None and not self.results:
                return
            rc = proc.returncode
            if done:
                # Every test ran; only the worker's exit (atexit joins of children, feeder
                # flushes) is left.
                if outcome == 'timeout':
                    self.fixture_events.append({
                        'what': 'worker exit after the last test', 'status': 'hung', 'tb': '',
                        'reason': 'interpreter did not exit within %ss after the tests finished; '
                                  'killed; alive after the last test: %s' % (
                                      self.args.exit_timeout, '; '.join(self.lingering) or 'nothing')})
                elif rc != 0:
                    self.fixture_events.append({
                        'what': 'worker exit after the last test', 'status': 'crash', 'tb': '',
                        'reason': 'worker exited with status %s after the tests finished' % rc})
                break
            # The worker hung or died. Blame the test (or fixture) in progress.
            what = 'hung' if outcome == 'timeout' else 'crash'
            detail = ('no progress for %ss; killed' % self.args.timeout if what == 'hung'
                      else 'worker exited with status %s during the test' % rc)
            if current is not None:
                secs = round(time.time() - started_at.get(current, time.time()), 1)
                self.results[current] = {'status': what, 'reason': detail, 'tb': '', 'secs': secs}
                pending.remove(current)
                cls = current.split('.')[1]
                hangs_per_class[cls] = hangs_per_class.get(cls, 0) + 1
                if what == 'hung' and hangs_per_class[cls] >= self.args.max_hangs_per_class:
                    for tid in [t for t in pending if t.split('.')[1] == cls]:
                        self.results[tid] = {
                            'status': 'not_run', 'tb': '', 'secs': 0,
                            'reason': 'class abandoned after %d hung tests' % hangs_per_class[cls]}
                        pending.remove(tid)
            else:
                # Between tests: a class/module fixture hung or crashed. Give up on the class
                # of the next pending test.
                fixture = current_fixture or 'a fixture before %s' % (pending[0] if pending else '?')
                self.fixture_events.append({'what': fixture, 'status': what, 'reason': detail, 'tb': ''})
                if pending:
                    cls = pending[0].split('.')[1]
                    for tid in [t for t in pending if t.split('.')[1] == cls]:
                        self.results[tid] = {'status': 'not_run', 'tb': '', 'secs': 0,
                                             'reason': '%s %s (%s)' % (fixture, what, detail)}
                        pending.remove(tid)
        # Tests the worker never reached: class/module fixture failures or skips.
        for tid in order:
            if tid in self.results:
                continue
            cls = tid.split('.')[1]
            status, reason = 'not_run', 'never started'
            for fx in self.fixture_events:
                if fx['what'].endswith('(%s.%s)' % (tid.split('.')[0], cls)) or \
                        fx['what'].startswith('setUpModule'):
                    status = 'skip' if fx['status'] == 'skip' else 'not_run'
                    reason = '%s: %s' % (fx['what'], fx['reason'])
                    break
            self.results[tid] = {'status': status, 'reason': reason, 'tb': '', 'secs': 0}


def read_events(path):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return []
    out = []
    for line in data.split(b'\n'):
        try:
            out.append(json.loads(line.decode('utf-8', 'replace')))
        except ValueError:
            pass
    return out


def normalize(reason):
    r = re.sub(r'0x[0-9a-fA-F]+', '0x...', reason)
    r = re.sub(r'\d+(\.\d+)?', 'N', r)
    r = re.sub(r"'[^']*' != '[^']*'", "'...' != '...'", r)
    return r[:160]


def summarize(runner, ids, elapsed, args):
    interp = 'procpy' if is_procpy() else 'CPython %d.%d.%d' % sys.version_info[:3]
    lines = []
    p = lines.append
    p('CPython multiprocessing suite: start method %s, interpreter %s (%s)' % (
        runner.method, interp, sys.executable))
    p('mode: %s%s; per-test timeout %ss; %.0fs elapsed; %d worker(s) started; worker log: %s' % (
        'strict' if args.strict else 'compat', ', quick subset' if args.quick else '',
        args.timeout, elapsed, runner.workers_started, runner.log_path))
    for n in runner.notes:
        p('note: ' + n)
    if runner.import_error is not None and not ids:
        p('IMPORT ERROR: test module could not be imported: %s' % runner.import_error['reason'])
        tb = runner.import_error.get('tb') or ''
        for l in tb.strip().splitlines()[-6:]:
            p('    ' + l)
        p('SUMMARY %s %s: import-error (no test ran): %s' % (
            interp, runner.method, runner.import_error['reason']))
        return '\n'.join(lines), {}
    by_class = {}
    for tid in ids:
        cls = tid.split('.')[1]
        by_class.setdefault(cls, {s: 0 for s in STATUSES})[runner.results[tid]['status']] += 1
    totals = {s: sum(c[s] for c in by_class.values()) for s in STATUSES}
    p('')
    p('%-48s %5s %5s %5s %5s %5s %5s %5s %5s' % (('class',) + STATUSES + ('total',)))
    for cls in sorted(by_class):
        c = by_class[cls]
        p('%-48s %5d %5d %5d %5d %5d %5d %5d %5d' % ((cls,) + tuple(c[s] for s in STATUSES)
                                                     + (sum(c.values()),)))
    p('%-48s %5d %5d %5d %5d %5d %5d %5d %5d' % (('TOTAL',) + tuple(totals[s] for s in STATUSES)
                                                 + (len(ids),)))
    if runner.fixture_events:
        p('')
        p('class/module fixture problems:')
        for fx in runner.fixture_events:
            p('  %s %s: %s' % (fx['status'], fx['what'], fx['reason']))
    leaky = [(tid, runner.results[tid].get('left_running')) for tid in ids
             if runner.results[tid].get('left_running')]
    if leaky:
        p('')
        p('tests that left child processes running (non-daemonic ones are joined at exit):')
        for tid, left in leaky:
            p('  %s: %s' % (tid.split('.', 1)[1], ', '.join(left)))
    if runner.foreign:
        p('')
        p('child processes that ran test-loop code (a fork child returned into the caller?):')
        for f in runner.foreign:
            p('  %s (during %s)' % (f.get('msg'), f.get('during')))
    p('')
    p('failures, errors, hangs, crashes (first line of the reason):')
    for tid in ids:
        r = runner.results[tid]
        if r['status'] in ('fail', 'error', 'hung', 'crash', 'not_run'):
            p('  %-7s %s: %s' % (r['status'].upper(), tid.split('.', 1)[1], r['reason'][:300]))
    if not args.no_skips:
        p('')
        p('skips:')
        for tid in ids:
            r = runner.results[tid]
            if r['status'] == 'skip':
                p('  SKIP    %s: %s' % (tid.split('.', 1)[1], r['reason'][:200]))
    groups = {}
    for tid in ids:
        r = runner.results[tid]
        if r['status'] in ('fail', 'error', 'hung', 'crash', 'not_run'):
            key = '%s: %s' % (r['status'], normalize(r['reason']))
            groups.setdefault(key, []).append(tid.split('.', 1)[1])
    p('')
    p('most common reasons (normalized):')
    for key, tids in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:40]:
        p('  %4d  %s   e.g. %s' % (len(tids), key, tids[0]))
    p('')
    p('SUMMARY %s %s: ' % (interp, runner.method) +
      ' '.join('%s=%d' % (s, totals[s]) for s in STATUSES) + ' total=%d' % len(ids))
    return '\n'.join(lines), totals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('method', choices=METHODS)
    ap.add_argument('--json', metavar='PATH', help='write all results (with tracebacks) as JSON')
    ap.add_argument('--quick', action='store_true', help='only the classes in QUICK_CLASSES')
    ap.add_argument('-k', dest='patterns', action='append', default=[],
                    help='only tests whose id contains this substring (repeatable)')
    ap.add_argument('--timeout', type=float, default=60.0,
                    help='seconds without progress before a test counts as hung (default 60)')
    ap.add_argument('--exit-timeout', type=float, default=20.0,
                    help='seconds the worker may take to exit after the last test (default 20)')
    ap.add_argument('--max-hangs-per-class', type=int, default=3,
                    help='after this many hung tests, the rest of the class is not run (default 3)')
    ap.add_argument('--strict', action='store_true', help='no compatibility shims')
    ap.add_argument('--cpython-test-dir', help="CPython 3.11's Lib/test (default: ask python3)")
    ap.add_argument('--log', help='worker stdout/stderr go here (default: in the temp dir)')
    ap.add_argument('--keep', action='store_true', help='keep the temp dir')
    ap.add_argument('--no-skips', action='store_true', help='do not list skipped tests')
    # Internal.
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--list', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--results', help=argparse.SUPPRESS)
    ap.add_argument('--tests', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker_main(args)

    t0 = time.time()
    runner = Runner(args)
    try:
        ids = runner.list_tests()
        if ids is not None:
            if args.quick:
                ids = [t for t in ids if t.split('.')[1] in QUICK_CLASSES]
            if args.patterns:
                ids = [t for t in ids if any(pat in t for pat in args.patterns)]
            runner.run(ids)
            if runner.import_error is not None and not runner.results:
                ids = None
        ids = ids or []
        text, totals = summarize(runner, ids, time.time() - t0, args)
        print(text)
        sys.stdout.flush()
        if args.json:
            data = {
                'interpreter': 'procpy' if is_procpy() else 'cpython',
                'version': sys.version,
                'executable': sys.executable,
                'method': args.method,
                'mode': 'strict' if args.strict else 'compat',
                'quick': args.quick,
                'timeout': args.timeout,
                'elapsed': round(time.time() - t0, 1),
                'notes': runner.notes,
                'import_error': runner.import_error,
                'fixture_events': runner.fixture_events,
                'foreign': runner.foreign,
                'totals': totals,
                'tests': {tid: runner.results[tid] for tid in ids},
            }
            with open(args.json, 'w') as f:
                json.dump(data, f, indent=1)
    finally:
        runner.cleanup()
        if args.keep:
            print('temp dir kept: %s' % runner.workdir)
        else:
            if args.log is None and os.path.exists(runner.log_path):
                # Keep the worker log next to the JSON (or in /tmp) for diagnosis.
                dest = (args.json + '.log') if args.json else os.path.join(
                    tempfile.gettempdir(), 'procpy_suite_%s_%s.log' % (
                        'procpy' if is_procpy() else 'cpython', args.method))
                try:
                    shutil.copyfile(runner.log_path, dest)
                    print('worker log: %s' % dest)
                except OSError:
                    pass
            shutil.rmtree(runner.workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
