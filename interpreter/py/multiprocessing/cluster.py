# Pools whose workers are `procpy worker` processes on other machines, reached through Redis
# streams. The wire contract (keys, fields, MACs, payloads) is docs/cluster-protocol.md; this
# file is the client half: it turns the pool engine's tasks into signed stream entries and
# the results stream back into `_deliver` calls, with the same outcomes as the local pool.
#
# Threads (raw `_thread` ones, as in pool.py), each with its own Redis connection: a flusher
# that XADDs every queued task in one pipeline per wake-up, a receiver blocked in XREAD on the
# results stream, and a watcher that refreshes the job's TTL, notices a job whose keys are
# gone and warns when no worker is alive.
__all__ = ['ClusterPool', 'WorkerLostError']

import collections
import os
import sys
import threading
import _thread
from time import monotonic as _monotonic

import _procpy

from . import pool as _pool
from . import process as _process
from .pool import Pool, _deliver, _helper_reraises_exception, RUN, CLOSE, TERMINATE

PROTOCOL_VERSION = 1
JOBS = b'procpy:jobs'
GROUP = b'w'
# A task that killed this many worker processes fails with WorkerLostError.
MAX_DELIVERIES = 3

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0
_SCAN_EVERY = 2.0
_BATCH = 1000


def job_key(job):
    return b'procpy:job:' + job


def tasks_key(job):
    return b'procpy:job:' + job + b':tasks'


def results_key(job):
    return b'procpy:job:' + job + b':results'


def code_key(digest):
    return b'procpy:code:' + digest


def hb_key(job, consumer):
    return b'procpy:job:' + job + b':hb:' + consumer


def lost_key(job, task_id):
    return b'procpy:job:' + job + b':lost:' + task_id


def _native():
    try:
        import _procpy_cluster
    except ImportError:
        raise RuntimeError('this procpy was built without cluster support '
                           '(no _procpy_cluster module)') from None
    return _procpy_cluster


def settings(url=None, key=None):
    '''(url, key) of this run, with clear errors when either is missing. Given values (an
    embedding engine's) win over the run's.'''
    s = _native().settings()
    url, key = url or s.get('url'), key or s.get('key')
    if not url:
        raise ValueError('no cluster to run the pool on: start the script with '
                         '`procpy --cluster redis://HOST:PORT/DB script.py` or set '
                         'PROCPY_CLUSTER=redis://HOST:PORT/DB')
    if not key:
        raise ValueError('no cluster key: tasks carry code, so they are signed with a key the '
                         'client and the workers share; pass --authkey-file FILE or set '
                         'PROCPY_CLUSTER_KEY (the workers need the same one)')
    return url, key


def routed():
    '''True when this run was started with --cluster (or PROCPY_CLUSTER): process pools of
    every context then run on the cluster.'''
    return _pool._cluster_routed()


class WorkerLostError(_pool.WorkerLostError):
    '''A task killed every cluster worker process that ran it; it is not retried again.'''

    def __init__(self, task_id, lost=()):
        self.task_id = task_id
        self.lost = list(lost)
        if isinstance(task_id, bytes):
            task_id = task_id.decode('ascii', 'replace')
        who = '; '.join(self.lost) or 'no record of which'
        _pool.ProcessError.__init__(
            self, 'cluster task %s was running in a worker process that died, %d times '
                  '(%s); it is not retried again' % (task_id, MAX_DELIVERIES, who))

    def __reduce__(self):
        return type(self), (self.task_id, self.lost)


def _env_number(name, default, kind=float):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ValueError('%s=%r is not a number' % (name, value)) from None
    if number <= 0:
        raise ValueError('%s must be positive, not %r' % (name, value))
    return number


def _stderr(line):
    try:
        sys.stderr.write(line + '\n')
        sys.stderr.flush()
    except Exception:
        pass


#
# The code that travels with a job
#

def _abs(path):
    if not os.path.isabs(path) and _process.ORIGINAL_DIR is not None:
        path = os.path.join(_process.ORIGINAL_DIR, path)
    return os.path.normpath(path)


def _main_description():
    '''(main dict without the digest, root or None, files {relpath: bytes}).'''
    main = {'path': None, 'root': None, 'bundle': None, 'run_name': '__mp_main__',
            'module': None}
    mod = sys.modules.get('__main__')
    file = getattr(mod, '__file__', None)
    if mod is None or not file or not file.endswith('.py'):
        return main, None, {}
    file = _abs(file)
    spec = getattr(mod, '__spec__', None)
    name = getattr(spec, 'name', None)
    if name and name != '__main__':
        # `-m pkg.mod`: the root is the directory the top package lies in.
        root = os.path.dirname(file)
        for _ in range(name.count('.')):
            root = os.path.dirname(root)
        main['module'] = name
    else:
        root = os.path.dirname(file)
        main['path'] = os.path.relpath(file, root).replace(os.sep, '/')
    main['root'] = root
    files = {}
    prefix = root.rstrip(os.sep) + os.sep
    for m in list(sys.modules.values()):
        f = getattr(m, '__file__', None)
        if not isinstance(f, str) or not f.endswith('.py'):
            continue
        f = _abs(f)
        if not f.startswith(prefix):
            continue
        rel = os.path.relpath(f, root).replace(os.sep, '/')
        if rel in files:
            continue
        try:
            with open(f, 'rb') as fh:
                files[rel] = fh.read()
        except OSError:
            continue
    return main, root, files


def _shipped_sys_path(root):
    out = []
    if root is None:
        return out
    prefix = root.rstrip(os.sep) + os.sep
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        a = _abs(entry or '.')
        if a == root:
            rel = ''
        elif a.startswith(prefix):
            rel = os.path.relpath(a, root).replace(os.sep, '/')
        else:
            continue
        if rel not in out:
            out.append(rel)
    return out


#
# Redis connections that survive a dropped connection
#

class _Stopped(Exception):
    '''The core stopped while a thread waited to reconnect.'''


def _reply_fields(fields):
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[0::2], fields[1::2]))


def _stream_entries(reply):
    '''The entries of an XREAD reply on one stream, RESP2 or RESP3 shaped.'''
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
    else:
        streams = [s[1] for s in reply]
    out = []
    for entries in streams:
        out.extend(entries or ())
    return out


class _ClusterCore(object):
    '''The pool engine's core (see pool._ProcessCore's interface) over a Redis cluster.'''
    # Ctrl-C while waiting for a result terminates the pool (see pool._interrupted).
    cancel_on_interrupt = True

    def __init__(self, pool, on_lost=None):
        self.owner_pid = os.getpid()
        self._on_lost = on_lost
        self._url, self._key = settings(getattr(pool, '_cluster_url', None),
                                        getattr(pool, '_cluster_key', None))
        self._cluster = _native()
        self._cache = pool._cache
        self._size = pool._processes
        self._ttl = int(_env_number('PROCPY_CLUSTER_TTL', 30, int))
        self._grace = _env_number('PROCPY_CLUSTER_GRACE', 10.0)
        # ProcessPoolExecutor(max_workers=N): CPython's call queue holds N + 1 calls and a
        # future turns RUNNING when it enters it, so only that many are handed out at a time
        # (cancel() works on the others). Without N the whole cluster may take the calls.
        self._explicit = getattr(pool, '_cluster_processes', None)
        self._window = None
        if self._explicit is not None and getattr(pool, '_pool_workers', True) is False:
            self._window = self._explicit + 1
        self.workers = []           # the cluster's workers are nobody's children
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.state = RUN
        self._queue = collections.deque()    # tasks without an id yet (window full)
        self._ready = []                     # (id, task) to XADD
        self._outstanding = {}               # task id (bytes) -> (result, index)
        self._next_id = 1
        self._feeders = 0
        self._lost = None                    # the exception every new task fails with
        self._stopped = False
        self._ended = False
        self._unreachable_warned = False
        self._startup_failures = 0
        self._startup_limit = max(self._size, 3)
        self._done = _thread.allocate_lock()     # released when closed and all is delivered
        self._done.acquire()
        self._done_released = False
        self._stop = _thread.allocate_lock()     # released to wake the watcher when stopping
        self._stop.acquire()
        self._job = os.urandom(16).hex().encode('ascii')
        self._digest = None
        conn = self._connect()
        try:
            self._create_job(conn, pool)
        except BaseException:
            conn.close()
            raise
        self._start_thread(self._flusher)
        self._start_thread(self._receiver)
        self._start_thread(self._watcher, conn)
        _pool._live_cores.add(self)

    # -- set-up

    def _connect(self, timeout=10.0):
        try:
            return self._cluster.Redis(self._url, timeout)
        except OSError as e:
            raise ConnectionError('cannot reach the cluster at %s: %s'
                                  % (self._masked_url(), e)) from None

    def _masked_url(self):
        url = self._url
        if '@' in url:
            scheme, _, rest = url.partition('://')
            url = scheme + '://***@' + rest.rpartition('@')[2]
        return url

    def _create_job(self, conn, pool):
        import hashlib
        main, root, files = _main_description()
        dumps, sign = _procpy.dumps, self._cluster.sign
        key, job = self._key, self._job
        cmds = []
        if files or main['path'] is not None:
            bundle = dumps({'files': files, 'main': main['path']})
            digest = hashlib.sha256(bundle).hexdigest()
            main['bundle'] = digest
            self._digest = code_key(digest.encode('ascii'))
            if not conn.call('EXISTS', self._digest):
                cmds.append(('HSET', self._digest, 'p', bundle,
                             'm', sign(key, b'code', digest.encode('ascii'), b'', bundle)))
            cmds.append(('EXPIRE', self._digest, self._ttl))
        meta = dumps({
            'version': PROTOCOL_VERSION,
            'client': '%s:%d' % (self._cluster.hostname(), os.getpid()),
            'main': main,
            'sys_path': _shipped_sys_path(root),
            'maxtasksperchild': pool._maxtasksperchild,
            'wrap_exception': pool._wrap_exception,
            'ttl': self._ttl,
            'processes': self._explicit,
            'trace': bool(_pool._tracing),
            # As spawn's preparation data: a main that reads sys.argv at top level sees the
            # client's arguments on the workers too.
            'argv': [a for a in sys.argv if isinstance(a, str)],
        })
        try:
            init = dumps((pool._initializer, pool._initargs))
        except Exception as e:
            raise type(e)('the pool initializer cannot be sent to the cluster: %s' % e) from e
        jk, tk, rk = job_key(job), tasks_key(job), results_key(job)
        cmds += [
            ('HSET', jk, 'meta', meta, 'mac', sign(key, b'meta', job, b'', meta),
             'init', init, 'imac', sign(key, b'init', job, b'', init)),
            ('EXPIRE', jk, self._ttl),
            ('XGROUP', 'CREATE', tk, GROUP, '0', 'MKSTREAM'),
            ('EXPIRE', tk, self._ttl),
            ('XGROUP', 'CREATE', rk, 'c', '$', 'MKSTREAM'),
            ('EXPIRE', rk, self._ttl),
            ('XADD', JOBS, 'MAXLEN', '~', 1000, '*', 'job', job, 'ev', 'start'),
        ]
        for reply in conn.pipeline(cmds, transaction=True):
            if isinstance(reply, Exception):
                raise RuntimeError('the cluster at %s refused the job: %s'
                                   % (self._masked_url(), reply))

    def _start_thread(self, fn, *args):
        def run():
            try:
                fn(*args)
            except _Stopped:
                pass
            except BaseException as e:
                # A bug here must not leave callers waiting for ever.
                self._fail_all(RuntimeError('the cluster pool stopped: %s: %s'
                                            % (type(e).__name__, e)))

        _thread.start_new_thread(run, ())

    def _thread_connect(self, timeout):
        '''A connection for a pool thread, retried with backoff (Redis may be restarting).'''
        conn, _ = self._retry(None, lambda c: self._cluster.Redis(self._url, timeout))
        return conn

    # -- Redis calls with reconnection

    def _retry(self, conn, op):
        '''op(conn) until it succeeds; ConnectionError/TimeoutError -> backoff and again.
        Returns (reply, reconnected).'''
        delay = _BACKOFF_FIRST
        failed = None
        while True:
            if self._stopped:
                raise _Stopped
            try:
                reply = op(conn)
            except (ConnectionError, TimeoutError, OSError) as e:
                if failed is None:
                    failed = _monotonic()
                elif _monotonic() - failed >= self._grace:
                    self._warn_unreachable(e)
            else:
                if failed is not None:
                    with self._lock:
                        self._unreachable_warned = False
                return reply, failed is not None
            if self._stop.acquire(True, delay):
                self._stop.release()
                raise _Stopped
            delay = min(delay * 2, _BACKOFF_MAX)

    def _warn_unreachable(self, exc):
        with self._lock:
            if self._unreachable_warned:
                return
            self._unreachable_warned = True
        _stderr('procpy: the cluster\'s Redis at %s is unreachable (%s); still trying'
                % (self._masked_url(), exc))

    # -- handing out tasks

    def submit(self, tasks):
        failed = []
        with self._lock:
            if self.state == TERMINATE:
                raise ValueError("Pool not running")
            for task in tasks:
                self._queue_locked(task, failed)
            self._assign_locked()
        self._report(failed)

    def _queue_locked(self, task, failed):
        if self._lost is not None:
            failed.append((task[0], task[1], (False, self._lost)))
        elif task[2] is _helper_reraises_exception:
            failed.append((task[0], task[1], (False, task[3][0])))
        else:
            self._queue.append(task)

    def feed(self, tasks, set_length):
        with self._lock:
            self._feeders += 1

        def run():
            n = 0
            try:
                for task in tasks:
                    failed = []
                    with self._lock:
                        if self.state == TERMINATE:
                            return
                        self._queue_locked(task, failed)
                        self._assign_locked()
                    self._report(failed)
                    n = task[1] + 1
                set_length(n)
            finally:
                with self._lock:
                    self._feeders -= 1
                    self._check_done_locked()
                    self._wake.notify_all()

        _thread.start_new_thread(run, ())

    def take_pending(self):
        '''Remove and return the results of tasks not yet handed to the cluster.'''
        with self._lock:
            tasks, self._queue = list(self._queue), collections.deque()
            self._check_done_locked()
        return [t[0] for t in tasks]

    @staticmethod
    def _report(failed):
        for result, i, outcome in failed:
            _deliver(result, i, outcome)

    def _check_done_locked(self):
        if self._done_released:
            return
        if self.state == TERMINATE or (
                self.state == CLOSE and not self._queue and not self._outstanding
                and not self._feeders):
            self._done_released = True
            self._done.release()

    def _has_work_locked(self):
        return bool(self._queue or self._outstanding)

    # -- the flusher thread: queued tasks -> XADDs, one pipeline per wake-up

    def _flusher(self):
        conn = self._thread_connect(10.0)
        try:
            self._flush_loop(conn)
        finally:
            conn.close()

    def _flush_loop(self, conn):
        dumps, sign, key, job = _procpy.dumps, self._cluster.sign, self._key, self._job
        tk = tasks_key(job)
        tracing = _pool._tracing
        while True:
            with self._lock:
                while not self._stopped and not self._ready:
                    self._wake.wait(0.5)
                if self._stopped:
                    return
                batch = self._ready[:_BATCH]
                del self._ready[:_BATCH]
            cmds, failed, sent = [], [], []
            for tid, (result, i, func, args, kwds) in batch:
                try:
                    p = dumps((func, args, kwds, i) if tracing else (func, args, kwds))
                except Exception as e:
                    failed.append((tid, (False, e)))
                    continue
                cmds.append(('XADD', tk, 'NOMKSTREAM', '*', 't', tid, 'p', p,
                             'm', sign(key, b'task', job, tid, p)))
                sent.append(tid)
            del batch
            if cmds:
                replies, _ = self._retry(conn, lambda c: c.pipeline(cmds))
                del cmds
                for tid, reply in zip(sent, replies):
                    if reply is None:
                        self._job_gone()
                        return
                    if isinstance(reply, Exception):
                        failed.append((tid, (False, RuntimeError(
                            'the cluster did not take the task: %s' % reply))))
            for tid, outcome in failed:
                self._settle(tid, outcome)

    def _assign_locked(self):
        '''Give queued tasks their ids (and futures their RUNNING state) while the window
        has room; the flusher XADDs them.'''
        queue, window, outstanding = self._queue, self._window, self._outstanding
        moved = False
        while queue and (window is None or len(outstanding) < window):
            task = queue.popleft()
            start = getattr(task[0], '_start', None)
            if start is not None and not start():
                continue        # a cancelled future
            tid = str(self._next_id).encode('ascii')
            self._next_id += 1
            outstanding[tid] = (task[0], task[1])
            self._ready.append((tid, task))
            moved = True
        if moved:
            self._wake.notify_all()
        self._check_done_locked()

    # -- the receiver thread: results stream -> _deliver

    def _receiver(self):
        # BLOCK 1 s: the read timeout must outlast it.
        conn = self._thread_connect(15.0)
        try:
            self._receive_loop(conn)
        finally:
            conn.close()

    def _receive_loop(self, conn):
        verify, loads, key, job = self._cluster.verify, _procpy.loads, self._key, self._job
        rk = results_key(job)
        last = b'0-0'
        unread_trim = 0
        while not self._stopped:
            reply, _ = self._retry(conn, lambda c: c.call(
                'XREAD', 'COUNT', _BATCH, 'BLOCK', 1000, 'STREAMS', rk, last))
            entries = _stream_entries(reply)
            for entry_id, fields in entries:
                last = entry_id
                f = _reply_fields(fields)
                tid, p, mac = f.get(b't'), f.get(b'p'), f.get(b'm')
                if tid is None or p is None or mac is None or \
                        not verify(key, mac, b'result', job, tid, p):
                    _stderr('procpy: cluster job %s: dropped result entry %s of %s: bad or '
                            'missing MAC (a writer without the cluster key?)'
                            % (job.decode(), _text(entry_id), _text(f.get(b'w', b'?'))))
                    continue
                if tid == b'init':
                    self._startup_failed(p, f.get(b'w', b'?'))
                    continue
                with self._lock:
                    if tid not in self._outstanding:
                        continue        # a second copy (the task ran twice): dropped
                try:
                    outcome = loads(p)
                except Exception as e:
                    outcome = (False, e)
                self._settle(tid, outcome, started=True)
            unread_trim += len(entries)
            if unread_trim >= 256 or (entries and not self._outstanding):
                unread_trim = 0
                self._retry(conn, lambda c: c.call('XTRIM', rk, 'MINID', last))

    def _settle(self, tid, outcome, started=False):
        with self._lock:
            entry = self._outstanding.pop(tid, None)
            if entry is None:
                return
            if started:
                self._startup_failures = 0
            if self._window is not None:
                self._assign_locked()
            self._check_done_locked()
        _deliver(entry[0], entry[1], outcome)

    def _startup_failed(self, payload, worker):
        try:
            exc = _procpy.loads(payload)
        except Exception as e:
            exc = e
        if not isinstance(exc, BaseException):
            exc = RuntimeError('a cluster worker could not start: %r' % (exc,))
        if self._on_lost is not None:
            # ProcessPoolExecutor: a failing initializer breaks it, as locally.
            with self._lock:
                self.state = TERMINATE
                self._queue.clear()
                del self._ready[:]
                self._outstanding.clear()
                self._check_done_locked()
            self._on_lost(_text(worker), None, 1)
            self._cancel_async()
            return
        with self._lock:
            self._startup_failures += 1
            give_up = self._startup_failures >= self._startup_limit
        if give_up:
            self._fail_all(exc)

    def _fail_all(self, exc, lost=False):
        with self._lock:
            if lost:
                self._lost = exc
            pending = [(r, i) for r, i in self._outstanding.values()]
            pending += [(t[0], t[1]) for t in self._queue]
            self._outstanding.clear()
            self._queue.clear()
            del self._ready[:]
            self._check_done_locked()
        for result, i in pending:
            _deliver(result, i, (False, exc))

    def _job_gone(self):
        self._fail_all(RuntimeError(
            'the cluster lost job %s: its Redis keys are gone (did redis-server restart?)'
            % self._job.decode()), lost=True)

    # -- the watcher thread: TTL refresh, lost jobs, "no worker alive"

    def _watcher(self, conn):
        try:
            self._watch_loop(conn, _monotonic)
        finally:
            conn.close()

    def _watch_loop(self, conn, now):
        job = self._job
        keys = [job_key(job), tasks_key(job), results_key(job)]
        if self._digest is not None:
            keys.append(self._digest)
        refresh_every = max(self._ttl / 3.0, 0.1)
        next_refresh = now() + refresh_every
        next_scan = 0.0
        work_since = None
        last_alive = None
        warned = False
        while True:
            if self._stop.acquire(True, 0.25):
                self._stop.release()
                return
            if self._lost is not None:
                return
            t = now()
            reconnected = False
            if t >= next_refresh:
                replies, reconnected = self._retry(
                    conn, lambda c: c.pipeline([('EXPIRE', k, self._ttl) for k in keys]))
                next_refresh = now() + refresh_every
                # The job hash, or its task or result stream, deleted (a Redis restart, or
                # someone with write access): the job cannot finish; fail it, never hang.
                if replies and any(r == 0 for r in replies[:3]):
                    self._job_gone()
                    return
            if reconnected:
                # Redis may have restarted: check the job at once.
                next_refresh = 0.0
                continue
            with self._lock:
                busy = self._has_work_locked()
            if not busy:
                work_since, warned = None, False
                continue
            if work_since is None:
                work_since = t
            if t >= next_scan:
                alive, reconnected = self._retry(conn, self._any_worker)
                next_scan = now() + _SCAN_EVERY
                if reconnected:
                    next_refresh = 0.0
                if alive:
                    last_alive, warned = t, False
                    continue
                since = work_since if last_alive is None else max(work_since, last_alive)
                if not warned and t - since >= self._grace:
                    warned = True
                    with self._lock:
                        n = len(self._outstanding) + len(self._queue)
                    _stderr('procpy: no cluster worker is alive on %s; %d task%s wait '
                            '(start one with: procpy worker %s)'
                            % (self._masked_url(), n, '' if n == 1 else 's',
                               self._masked_url()))

    @staticmethod
    def _any_worker(conn):
        cursor = b'0'
        while True:
            cursor, keys = conn.call('SCAN', cursor, 'MATCH', 'procpy:worker:*', 'COUNT', 1000)
            if keys:
                return True
            if cursor in (b'0', 0, '0'):
                return False

    # -- stopping

    def _stop_threads(self):
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._wake.notify_all()
        self._stop.release()

    def _end(self, cancel):
        '''Delete the job's keys and announce its end, once. Best effort: keys expire anyway.'''
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._stop_threads()
        _pool._live_cores.discard(self)
        job = self._job
        cmds = [('DEL', job_key(job), tasks_key(job), results_key(job)),
                ('XADD', JOBS, 'MAXLEN', '~', 1000, '*', 'job', job, 'ev', 'end')]
        delay = _BACKOFF_FIRST
        for attempt in range(4):
            try:
                conn = self._connect(timeout=5.0)
                try:
                    conn.pipeline(cmds, transaction=True)
                finally:
                    conn.close()
                return
            except (ConnectionError, TimeoutError, OSError):
                if attempt == 3:
                    return
                import time
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    def _cancel_async(self):
        _thread.start_new_thread(self._end, (True,))

    def close(self):
        with self._lock:
            if self.state == RUN:
                self.state = CLOSE
            self._check_done_locked()
            self._wake.notify_all()

    def stop_soon(self):
        with self._lock:
            self.state = TERMINATE
            self._queue.clear()
            self._check_done_locked()
        self._cancel_async()

    def terminate(self):
        with self._lock:
            already = self._ended
            self.state = TERMINATE
            self._queue.clear()
            del self._ready[:]
            self._outstanding.clear()
            self._check_done_locked()
        self._end(cancel=True)
        if not already:
            for result in list(self._cache.values()):
                result._abort(_pool.PoolTerminatedError(
                    'the pool was terminated before this task finished'))

    def join(self):
        _pool._wait_lock(self._done, None, release=True)
        self._end(cancel=self.state == TERMINATE)


def _text(b):
    if isinstance(b, bytes):
        return b.decode('utf-8', 'replace')
    return str(b)


class ClusterPool(Pool):
    '''A multiprocessing.Pool whose tasks run on `procpy worker` processes (any machine)
    reached through Redis. `_pool` is empty: the workers are not this process's children.'''

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, url=None, key=None):
        self._cluster_processes = processes
        # An embedding engine's cluster (Builder::cluster), else the run's (--cluster).
        self._cluster_url, self._cluster_key = url, key
        Pool.__init__(self, processes, initializer, initargs, maxtasksperchild, context)

    def _make_core(self):
        return _ClusterCore(self)
