# `procpy worker URL`: one machine's share of the pool work of `procpy --cluster` clients.
#
# Two roles live here. The supervisor (main) watches the procpy:jobs stream of a Redis server
# and keeps N worker processes: warm spares that wait on stdin, and processes assigned to
# live jobs, N slots shared fairly between them. A job worker process (serve_stdin) serves
# exactly one job in a fresh interpreter, so no module of one job leaks into another: it
# fetches the job's signed meta and code bundle, imports the bundle from memory and runs the
# client's main script as `__mp_main__` (as a spawn child does), then consumes the job's task
# stream as a member of a consumer group and sends results back. Every payload is checked
# against its HMAC before it is decoded. The data model is in docs/cluster.md ("Protocol").
import os
import re
import select
import sys
import time

_GROUP = 'w'
# Heartbeat of a job worker process: refreshed every second, gone 3 s after it stops.
_HB_MS = 3000
_HB_EVERY = 1.0
# How long (ms) a worker blocks on the task stream before it looks around (reclaims the
# tasks of dead consumers, checks that the job still exists, listens to its supervisor).
_BLOCK_MS = 1000
# At most this many tasks per read; fast tasks are acknowledged in one pipeline per batch.
_BATCH = 16
# A task whose worker died this many times fails with WorkerLostError instead of running again.
_MAX_DELIVERIES = 3
# A process still busy this long after its job ended is killed.
_ENDED_GRACE_S = 3.0
# What a supervisor records about a dead process, and for how long.
_DIED_TTL_S = 60

_KEY_HELP = ('make one with `head -c 32 /dev/urandom > key`, copy it to every machine, and pass '
             '--authkey-file key to `procpy worker` and to `procpy --cluster` (or set '
             'PROCPY_CLUSTER_KEY on both)')


def _k_job(j):
    return 'procpy:job:' + j


def _k_tasks(j):
    return 'procpy:job:%s:tasks' % j


def _k_results(j):
    return 'procpy:job:%s:results' % j


def _k_hb(j, consumer):
    return 'procpy:job:%s:hb:%s' % (j, consumer)


def _k_died(j, consumer):
    return 'procpy:job:%s:died:%s' % (j, consumer)


def _k_lost(j, t):
    return 'procpy:job:%s:lost:%s' % (j, t)


def _k_code(digest):
    return 'procpy:code:' + digest


def _text(v):
    return v.decode('utf-8', 'replace') if isinstance(v, (bytes, bytearray)) else str(v)


def _b(v):
    return v if isinstance(v, bytes) else str(v).encode()


def _fields(flat):
    '''A stream entry's [f1, v1, f2, v2, ...] (or a map) as a dict with str keys.'''
    if isinstance(flat, dict):
        return {_text(k): v for k, v in flat.items()}
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _stream_entries(reply):
    '''Entries of the first stream of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map).'''
    if not reply:
        return []
    if isinstance(reply, dict):
        for v in reply.values():
            return v or []
        return []
    return reply[0][1] or []


# Job ids are what the client makes: os.urandom(16).hex().
_JOB_ID = re.compile('[0-9a-f]{32}')


def _gone(err):
    '''A Redis error saying the job's task stream (or its group) no longer exists.'''
    msg = str(err)
    # WRONGTYPE: someone replaced the stream with another type; the job cannot go on either.
    return 'NOGROUP' in msg or 'UNBLOCKED' in msg or 'WRONGTYPE' in msg


# Claims one pending task of a consumer whose heartbeat key is gone, atomically: checking and
# claiming in two steps could take a task another worker has just claimed (and count that as
# a death). Returns {id, fields, deliveries so far, dead consumer, its recorded cause} or nil.
_RECLAIM_LUA = '''
local tasks, group, me, hb, died = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local alive = {}
for _, e in ipairs(redis.call('XPENDING', tasks, group, '-', '+', 1000)) do
  local c = e[2]
  if c ~= me then
    if alive[c] == nil then alive[c] = redis.call('EXISTS', hb .. c) == 1 end
    if not alive[c] then
      local got = redis.call('XCLAIM', tasks, group, me, 0, e[1])
      if #got == 1 then
        return {e[1], got[1][2] or {}, e[4], c, redis.call('GET', died .. c)}
      end
    end
  end
end
return false
'''


def _log(msg):
    try:
        sys.stderr.write(msg + '\n')
        sys.stderr.flush()
    except Exception:
        pass


#
# The supervisor: `procpy worker URL`
#

_DESCRIPTION = '''\
Run pool work for `procpy --cluster` clients on this machine.

Start one `procpy worker` on every machine that should take work; it connects to the
Redis server at URL (redis://[user:password@]host:port/db), registers itself, and keeps
--processes worker processes ready. When a client runs

    procpy --cluster redis://HOST:6379/0 --authkey-file key script.py

the script's multiprocessing Pool / ProcessPoolExecutor tasks run on the workers: each job
gets fresh worker processes (its main script and the modules next to it are shipped with
the job), and the worker's slots are shared fairly between the live jobs. The worker prints
one line per job it joins or leaves. Ctrl-C (or SIGTERM) stops it.

Every task and result is authenticated with a secret key shared by the client and the
workers: --authkey-file FILE or the PROCPY_CLUSTER_KEY environment variable. Make one with

    head -c 32 /dev/urandom > key

Example:  procpy worker redis://10.0.0.1:6379/0 --processes 8 --authkey-file key
'''


def _parse(argv):
    import argparse
    p = argparse.ArgumentParser(
        prog='procpy worker', description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('url', metavar='URL', nargs='?', default=None,
                   help='the Redis server, redis://[user:password@]host:port/db (default: '
                   'PROCPY_CLUSTER, which keeps a password out of the process list)')
    p.add_argument('--processes', '-n', type=int, metavar='N', default=None,
                   help='worker processes on this machine (default: the CPU count, %d here)'
                   % (os.cpu_count() or 1))
    p.add_argument('--name', metavar='NAME', default=None,
                   help='this worker\'s name in Redis and in its output (default: HOST:PID)')
    p.add_argument('--authkey-file', metavar='FILE', default=None,
                   help='file holding the secret key shared with the clients '
                   '(default: PROCPY_CLUSTER_KEY)')
    p.add_argument('--ttl', type=float, metavar='SECS', default=10.0,
                   help='this worker\'s registration expires SECS seconds after it stops '
                   'refreshing it (default: 10)')
    args = p.parse_args(argv)
    if args.url is None:
        args.url = os.environ.get('PROCPY_CLUSTER') or None
        if args.url is None:
            p.error('no URL: give redis://HOST:PORT/DB or set PROCPY_CLUSTER')
    if args.processes is not None and args.processes < 1:
        p.error('--processes must be at least 1')
    if not args.ttl > 0:
        p.error('--ttl must be positive')
    return p, args


def _read_key(parser, args):
    if args.authkey_file is not None:
        try:
            with open(args.authkey_file, 'rb') as f:
                key = f.read()
        except OSError as e:
            parser.exit(2, 'procpy worker: cannot read the key file %s: %s\n'
                        % (args.authkey_file, e.strerror or e))
        if key.endswith(b'\n'):
            key = key[:-1]
        if not key:
            parser.exit(2, 'procpy worker: the key file %s is empty; %s\n'
                        % (args.authkey_file, _KEY_HELP))
        return key
    key = None
    try:
        import _procpy_cluster
        key = _procpy_cluster.settings().get('key')
    except OSError as e:
        parser.exit(2, 'procpy worker: %s\n' % e)
    except Exception:
        key = None
    if not key:
        env = os.environ.get('PROCPY_CLUSTER_KEY')
        key = env.encode('utf-8') if env else None
    if not key:
        parser.exit(2, 'procpy worker: no key (--authkey-file FILE or PROCPY_CLUSTER_KEY). '
                    'Tasks carry code, so a worker only runs tasks signed with a secret key it '
                    'shares with its clients: %s.\n' % _KEY_HELP)
    return key


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    parser, args = _parse(list(argv))
    key = _read_key(parser, args)
    if len(key) < 16:
        # The clients refuse such keys too (sign/verify): a guessable key lets anyone who
        # can write to Redis run code here.
        parser.exit(2, 'procpy worker: the key has %d bytes; it needs at least 16: %s.\n'
                    % (len(key), _KEY_HELP))
    import _procpy_cluster
    if args.url.startswith('rediss://'):
        parser.exit(2, 'procpy worker: rediss:// (TLS) is not built into procpy; reach a '
                    'TLS Redis through a tunnel (stunnel, ssh -L): see docs/cluster.md\n')
    host = _procpy_cluster.hostname()
    name = args.name or '%s:%d' % (host, os.getpid())
    n = args.processes or os.cpu_count() or 1
    try:
        sup = _Supervisor(args.url, key, name, host, n, args.ttl)
    except (OSError, _procpy_cluster.RedisError, ValueError) as e:
        parser.exit(1, 'procpy worker: cannot connect to Redis: %s\n' % e)
    return sup.run()


class _Child(object):
    '''One worker process of the supervisor.'''

    def __init__(self, popen, consumer):
        self.popen = popen
        self.pid = popen.pid
        self.consumer = consumer
        self.job = None
        self.leaving = False
        self.done = None        # the task count it reported when it left its job


class _Job(object):
    def __init__(self, j, meta, seq):
        self.id = j
        self.meta = meta
        self.seq = seq          # join order: earlier jobs get the odd slots
        self.children = set()
        self.ended = False
        self.joined = False
        self.done = 0
        self.fail_streak = 0    # start-ups that failed in a row: restarts back off
        self.retry_at = 0.0
        self.ended_at = None
        self.queued = 1         # entries in its tasks stream (waiting or running): its demand


class _Supervisor(object):
    def __init__(self, url, key, name, host, n, ttl):
        import _procpy_cluster
        self.url, self.key, self.name, self.host, self.n = url, key, name, host, n
        self.ttl_ms = max(int(ttl * 1000), 300)
        self.mod = _procpy_cluster
        self.r = _procpy_cluster.Redis(url, timeout=30)
        self.children = {}
        self.jobs = {}
        self.ignored = set()
        self.seq = 0
        self.stopping = False
        self.status_r, self.status_w = os.pipe()
        os.set_blocking(self.status_r, False)
        self.status_buf = b''
        self.spare_failures = 0
        self.spawn_at = 0.0

    # -- output

    def say(self, msg):
        sys.stdout.write('procpy worker %s: %s\n' % (self.name, msg))
        sys.stdout.flush()

    # -- Redis, tolerating restarts

    def call(self, *args):
        return self._retry(lambda: self.r.call(*args))

    def pipeline(self, cmds):
        return self._retry(lambda: self.r.pipeline(cmds))

    def _retry(self, fn):
        delay = 0.1
        warned = False
        while True:
            try:
                result = fn()
                if warned:
                    _log('procpy worker %s: reconnected to Redis' % self.name)
                    # A restarted server has forgotten this worker.
                    try:
                        self.r.call(*self._registration())
                    except (ConnectionError, self.mod.RedisError):
                        pass
                return result
            except (ConnectionError, TimeoutError) as e:
                if self.stopping:
                    raise
                if not warned:
                    _log('procpy worker %s: lost the Redis connection (%s); reconnecting'
                         % (self.name, e))
                    warned = True
                self._sleep(delay)
                delay = min(delay * 2, 2.0)
                self._reap()

    def _sleep(self, seconds):
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # -- main loop

    def run(self):
        import signal

        def stop(signum, frame):
            self.stopping = True
        old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._register()
            # Announcements from here on are read from the stream; the jobs already live are
            # found by a scan (a worker started mid-job joins it).
            last_id = self._scan_jobs()
            self.say('ready, %d process%s, waiting for jobs on %s'
                     % (self.n, '' if self.n == 1 else 'es', self.r.url))
            next_register = time.monotonic() + self.ttl_ms / 3000.0
            next_check = time.monotonic() + 1.0
            while not self.stopping:
                self._top_up()
                try:
                    reply = self.call('XREAD', 'COUNT', 100, 'BLOCK', 250,
                                      'STREAMS', 'procpy:jobs', last_id)
                except (ConnectionError, TimeoutError):
                    break
                except self.mod.RedisError as e:
                    _log('procpy worker %s: reading procpy:jobs: %s' % (self.name, e))
                    self._sleep(1.0)
                    reply = None
                for eid, flat in _stream_entries(reply):
                    last_id = eid
                    f = _fields(flat)
                    j, ev = _text(f.get('job', b'')), _text(f.get('ev', b''))
                    if ev == 'start':
                        self._consider(j)
                    elif ev == 'end' and j in self.jobs:
                        self.jobs[j].ended = True
                self._reap()
                now = time.monotonic()
                if now >= next_register:
                    self._register()
                    next_register = now + self.ttl_ms / 3000.0
                if now >= next_check:
                    self._check_jobs()
                    next_check = now + 1.0
                self._retire_jobs()
                self._balance()
        finally:
            self.stopping = True
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return 0

    def _registration(self):
        import json
        info = json.dumps({'name': self.name, 'host': self.host, 'pid': os.getpid(),
                           'processes': self.n})
        return ('SET', 'procpy:worker:' + self.name, info, 'PX', self.ttl_ms)

    def _register(self):
        self.call(*self._registration())

    def _scan_jobs(self):
        '''Join the jobs that started and did not end (newest announcements first); returns
        the id to read announcements after.'''
        recent = self.call('XREVRANGE', 'procpy:jobs', '+', '-', 'COUNT', 1000) or []
        seen = set()
        for eid, flat in recent:
            f = _fields(flat)
            j, ev = _text(f.get('job', b'')), _text(f.get('ev', b''))
            if j in seen:
                continue
            seen.add(j)
            if ev == 'start':
                self._consider(j)
        return recent[0][0] if recent else b'0-0'

    def _consider(self, j):
        '''A job was announced: join it if its meta is genuine. Announcements are not signed:
        anyone who can write to Redis can make one, so nothing here may stop the supervisor.'''
        if j in self.jobs or j in self.ignored or not j:
            return
        if len(self.ignored) > 10000:
            self.ignored.clear()    # a flood of forged announcements must not grow memory
        if not _JOB_ID.fullmatch(j):
            self.ignored.add(j)
            return
        try:
            meta = _fetch_meta(self.call, self.mod, self.key, j)
        except self.mod.RedisError as e:
            _log('procpy worker %s: ignoring job %s: %s' % (self.name, j, e))
            self.ignored.add(j)
            return
        if meta is None:
            return
        if isinstance(meta, str):
            _log('procpy worker %s: ignoring job %s: %s' % (self.name, j, meta))
            self.ignored.add(j)
            return
        self.seq += 1
        self.jobs[j] = _Job(j, meta, self.seq)

    def _check_jobs(self):
        live = [j for j, job in self.jobs.items() if not job.ended]
        if not live:
            return
        cmds = []
        for j in live:
            cmds += [('EXISTS', _k_job(j)), ('XLEN', _k_job(j) + ':tasks')]
        replies = self.pipeline(cmds)
        for i, j in enumerate(live):
            e, n = replies[2 * i], replies[2 * i + 1]
            if e == 0:
                self.jobs[j].ended = True
            # Done tasks are XDEL'd: the length is what waits or runs.
            self.jobs[j].queued = n if isinstance(n, int) else 1

    def _retire_jobs(self):
        now = time.monotonic()
        for j, job in list(self.jobs.items()):
            if job.ended:
                if job.ended_at is None:
                    job.ended_at = now
                for c in job.children:
                    self._tell_leave(c)
                    if now - job.ended_at > _ENDED_GRACE_S:
                        # A task still running for a job that is over (cancelled, or its
                        # client died) is wasted work: its slot goes to live jobs.
                        try:
                            c.popen.kill()
                        except OSError:
                            pass
                if not job.children:
                    if job.joined:
                        self.say('left job %s (%d tasks done)' % (j, job.done))
                    del self.jobs[j]
                    self.ignored.add(j)

    # -- processes

    def _spawn(self):
        import subprocess
        env = dict(os.environ)
        # Pools a task makes run locally on this machine (and the key stays out of children's
        # environment: it reaches a worker process through its stdin pipe only).
        for v in ('PROCPY_CLUSTER', 'PROCPY_CLUSTER_KEY', 'PROCPY_CLUSTER_KEY_FILE'):
            env.pop(v, None)
        p = subprocess.Popen(
            [sys.executable, '-c', 'import _procpy_cluster_worker as w; w.serve_stdin()'],
            stdin=subprocess.PIPE, pass_fds=(self.status_w,), env=env)
        c = _Child(p, '%s:%d' % (self.host, p.pid))
        self.children[p.pid] = c
        return c

    def _top_up(self):
        if time.monotonic() < self.spawn_at:
            return
        while len(self.children) < self.n and not self.stopping:
            try:
                self._spawn()
            except OSError as e:
                _log('procpy worker %s: cannot start a worker process: %s' % (self.name, e))
                self._sleep(1.0)
                return

    def _assign(self, c, job, quota):
        import json
        msg = json.dumps({'url': self.url, 'key': self.key.hex(), 'job': job.id,
                          'consumer': c.consumer, 'status_fd': self.status_w})
        try:
            c.popen.stdin.write(msg.encode() + b'\n')
            c.popen.stdin.flush()
        except OSError:
            return False    # it died while it waited; _reap replaces it
        c.job = job.id
        job.children.add(c)
        if not job.joined:
            job.joined = True
            main = job.meta.get('main') or {}
            what = main.get('path') or main.get('module') or 'none'
            self.say('joined job %s from client %s (main %s, %d process%s)' % (
                job.id, job.meta.get('client', '?'), what, quota, '' if quota == 1 else 'es'))
        return True

    def _tell_leave(self, c):
        if c.leaving:
            return
        c.leaving = True
        try:
            c.popen.stdin.write(b'leave\n')
            c.popen.stdin.flush()
        except OSError:
            pass

    def _live(self):
        return sorted((x for x in self.jobs.values() if not x.ended), key=lambda x: x.seq)

    def _quotas(self):
        '''Slots per live job: one at a time round the jobs (earlier jobs get the odd ones),
        none beyond a job's own Pool(processes=N).'''
        q = {}
        live = self._live()
        for job in live:
            q[job.id] = 0
        if self.n < len(live):
            # Fewer slots than jobs: jobs with work first (an idle job must not hold the only
            # slot another job waits for), and machines start the round at different jobs
            # (by their name) so that together they serve several jobs at once.
            import zlib
            k = zlib.crc32(self.name.encode()) % len(live)
            live = live[k:] + live[:k]
            live.sort(key=lambda x: x.queued == 0)
        left = self.n
        while left and live:
            for job in list(live):
                cap = job.meta.get('processes')
                if isinstance(cap, int) and cap > 0 and q[job.id] >= cap:
                    live.remove(job)
                    continue
                if not left:
                    break
                q[job.id] += 1
                left -= 1
        return q

    def _balance(self):
        quotas = self._quotas()
        if not quotas:
            return
        now = time.monotonic()
        spares = [c for c in self.children.values() if c.job is None]
        for job in self._live():
            serving = [c for c in job.children if not c.leaving]
            want = quotas[job.id]
            # A job over its share gives slots back (its processes finish their batch first).
            for c in serving[want:]:
                self._tell_leave(c)
            if job.retry_at > now:
                continue
            for _ in range(want - len(serving)):
                if not spares:
                    break
                self._assign(spares.pop(), job, want)

    def _read_status(self):
        while True:
            try:
                data = os.read(self.status_r, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self.status_buf += data
        *lines, self.status_buf = self.status_buf.split(b'\n')
        for line in lines:
            parts = line.decode('utf-8', 'replace').split(' ', 3)
            if len(parts) < 3:
                continue
            try:
                pid, what, count = int(parts[0]), parts[1], int(parts[2])
            except ValueError:
                continue
            c = self.children.get(pid)
            if c is None or c.job is None:
                continue
            self.spare_failures = 0     # a process booted and got to work
            job = self.jobs.get(c.job)
            if what == 'ran':
                if job is not None:
                    job.done += count
            elif what == 'done':
                c.done = count
                if job is not None:
                    job.fail_streak = 0
            elif what == 'failed' and job is not None:
                c.done = count
                self._backoff(job)
                if job.fail_streak == 1:
                    self.say('job %s: its worker process could not start (%s); retrying'
                             % (job.id, parts[3] if len(parts) > 3 else '?'))

    @staticmethod
    def _backoff(job):
        '''Processes of this job keep dying: start the next one a little later each time.'''
        job.fail_streak += 1
        job.retry_at = time.monotonic() + min(0.25 * 2 ** (job.fail_streak - 1), 10.0)

    def _reap(self):
        self._read_status()
        for pid, c in list(self.children.items()):
            rc = c.popen.poll()
            if rc is None:
                continue
            del self.children[pid]
            try:
                c.popen.stdin.close()
            except OSError:
                pass
            if c.job is None:
                if not self.stopping:
                    _log('procpy worker %s: a spare worker process exited (%s)'
                         % (self.name, _exit_cause(rc)))
                    # Whatever kills them at boot would otherwise kill them in a tight loop.
                    self.spare_failures += 1
                    self.spawn_at = time.monotonic() + min(
                        0.25 * 2 ** (self.spare_failures - 1), 10.0)
                continue
            job = self.jobs.get(c.job)
            if job is not None:
                job.children.discard(c)
            if c.done is None and not (job is None or job.ended):
                self._backoff(job)
                # It died serving the job: its heartbeat goes now (its tasks are reclaimed at
                # once, not 3 s later) and the cause goes where WorkerLostError finds it.
                cause = _exit_cause(rc)
                if not self.stopping:
                    _log('procpy worker %s: worker process %s serving job %s %s'
                         % (self.name, c.consumer, c.job, cause))
                ttl = max(int((job.meta.get('ttl') if job else 0) or 0), _DIED_TTL_S)
                try:
                    self.r.pipeline([
                        ('SET', _k_died(c.job, c.consumer), cause, 'EX', ttl),
                        ('DEL', _k_hb(c.job, c.consumer)),
                    ])
                except (ConnectionError, self.mod.RedisError):
                    pass

    def _shutdown(self):
        for c in self.children.values():
            try:
                c.popen.terminate()
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for c in list(self.children.values()):
            try:
                c.popen.kill()
                c.popen.wait()
            except OSError:
                pass
        self._reap()
        for j, job in self.jobs.items():
            if job.joined:
                self.say('left job %s (%d tasks done; worker stopping)' % (j, job.done))
        try:
            self.r.call('DEL', 'procpy:worker:' + self.name)
        except Exception:
            pass
        self.say('stopped')


def _exit_cause(rc):
    if rc is not None and rc < 0:
        import signal
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = 'signal %d' % -rc
        return 'killed by signal %d (%s)' % (-rc, name)
    return 'exited with code %s' % rc


def _fetch_meta(call, mod, key, j):
    '''The job's meta dict; None when the job is gone; a str saying why it is refused.'''
    import _procpy
    f = _fields(call('HGETALL', _k_job(j)) or [])
    if not f:
        return None
    meta, mac = f.get('meta'), f.get('mac')
    if meta is None or mac is None:
        return 'its meta is incomplete'
    if not mod.verify(key, mac, b'meta', j.encode(), b'', meta):
        return 'its meta does not carry a valid MAC (another key?); not decoded'
    try:
        meta = _procpy.loads(meta)
    except Exception as e:
        return 'its meta cannot be decoded: %s' % e
    if not isinstance(meta, dict):
        return 'its meta is not a dict'
    if meta.get('version') != 1:
        return 'its protocol version is %r; this worker speaks version 1' % meta.get('version')
    return meta


#
# A job worker process
#

def _lost_error(t, lost):
    '''The WorkerLostError a task that killed its workers fails with (the client's class).'''
    try:
        from multiprocessing.cluster import WorkerLostError
    except ImportError:
        WorkerLostError = None
    if WorkerLostError is not None:
        return WorkerLostError(t, lost)
    from multiprocessing.pool import WorkerLostError
    e = WorkerLostError.__new__(WorkerLostError)
    Exception.__init__(e, 'cluster task %s killed every worker process that ran it: %s'
                       % (t, '; '.join(lost)))
    e.name, e.pid, e.exitcode = None, None, None
    return e


class _Leave(Exception):
    '''The job is over for this process (gone, told to leave, maxtasksperchild).'''


class _BundleFinder(object):
    '''Imports the job's modules from its code bundle, in memory (a meta-path finder placed
    first, as the client's script directory comes first on its sys.path).'''

    def __init__(self, files, roots, origin):
        self.files = files          # bundle-relative path -> source bytes
        self.roots = roots          # bundle-relative directories searched, in order
        self.origin = origin        # the client's directory of the bundle root

    def _locate(self, fullname):
        rel = fullname.replace('.', '/')
        for root in self.roots:
            root = root.strip('/')
            base = rel if root in ('', '.') else root + '/' + rel
            for cand, pkg in ((base + '/__init__.py', True), (base + '.py', False)):
                if cand in self.files:
                    return cand, pkg
        return None, False

    def find_spec(self, fullname, path=None, target=None):
        import importlib.util
        rel, pkg = self._locate(fullname)
        if rel is None:
            return None
        filename = _client_path(self.origin, rel)
        spec = importlib.util.spec_from_loader(fullname, _BundleLoader(self, rel, filename),
                                               origin=filename, is_package=pkg)
        spec.has_location = True
        if pkg:
            spec.submodule_search_locations = [os.path.dirname(filename)]
        return spec


class _BundleLoader(object):
    def __init__(self, finder, rel, filename):
        self.finder, self.rel, self.filename = finder, rel, filename

    def create_module(self, spec):
        return None

    def is_package(self, fullname):
        return self.rel.endswith('/__init__.py') or self.rel == '__init__.py'

    def get_filename(self, fullname):
        return self.filename

    def get_source(self, fullname):
        return _decode_source(self.finder.files[self.rel])

    def get_code(self, fullname):
        # runpy (a client run with `-m pkg.mod`) runs a module from its loader's code.
        return _compile(self.finder.files[self.rel], self.filename)

    def exec_module(self, module):
        module.__file__ = self.filename
        exec(self.get_code(module.__name__), module.__dict__)


def _client_path(origin, rel):
    return os.path.join(origin, rel) if origin else rel


def _decode_source(src):
    if isinstance(src, str):
        return src
    import io
    import tokenize
    try:
        enc, _ = tokenize.detect_encoding(io.BytesIO(src).readline)
    except SyntaxError:
        enc = 'utf-8'
    return src.decode(enc, 'replace')


def _compile(src, filename):
    '''Compile a shipped source under the client's path, and let tracebacks show its lines.'''
    import linecache
    text = _decode_source(src)
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith('\n'):
        lines[-1] += '\n'
    # mtime None: linecache.checkcache never drops it for a file missing on this machine.
    linecache.cache[filename] = (len(text), None, lines, filename)
    return compile(src, filename, 'exec', dont_inherit=True)


# Code bundles this process fetched and verified, by digest.
_bundles = {}


class _JobWorker(object):
    '''One worker process's life in one job.'''

    def __init__(self, url, key, job, consumer, status_fd, ctl):
        import _procpy_cluster
        self.ctl = ctl          # the supervisor's pipe (`leave`, or EOF when it is gone)
        self.mod = _procpy_cluster
        self.url, self.key, self.job, self.consumer = url, key, job, consumer
        self.jb = job.encode()
        self.status_fd = status_fd
        self.r = _procpy_cluster.Redis(url, timeout=30)
        self.done = 0
        self.hb_stop = False
        self.meta = None
        self.ttl = 30
        self.wrap = True
        self.maxtasks = None
        import _procpy
        from multiprocessing import pool
        self.pool, self.dumps, self.loads = pool, _procpy.dumps, _procpy.loads

    # -- status to the supervisor

    def _status(self, what, extra='', count=None):
        '''A line to the supervisor (one write: lines of all its processes never mix).'''
        if self.status_fd is None:
            return
        count = self.done if count is None else count
        line = ('%d %s %d %s' % (os.getpid(), what, count, extra)).strip()
        line = line.replace('\n', ' ')[:400] + '\n'
        try:
            os.write(self.status_fd, line.encode('utf-8', 'replace'))
        except OSError:
            pass

    # -- Redis with reconnects

    def _retry(self, fn):
        delay = 0.1
        while True:
            try:
                return fn()
            except (ConnectionError, TimeoutError):
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._check_leave_request()
                try:
                    if not self.r.call('EXISTS', _k_job(self.job)):
                        raise _Leave('its keys are gone after a reconnect')
                except (ConnectionError, TimeoutError):
                    pass

    def call(self, *args):
        return self._retry(lambda: self.r.call(*args))

    def pipeline(self, cmds, transaction=False):
        return self._retry(lambda: self.r.pipeline(cmds, transaction=transaction))

    # -- heartbeat (its own thread and connection: a long task keeps its claim)

    def _heartbeat(self):
        r = None
        key = _k_hb(self.job, self.consumer)
        while not self.hb_stop:
            try:
                if r is None:
                    r = self.mod.Redis(self.url, timeout=10)
                r.call('SET', key, str(os.getpid()), 'PX', _HB_MS)
            except (ConnectionError, TimeoutError, self.mod.RedisError):
                r = None
            time.sleep(_HB_EVERY)
        if r is not None:
            r.close()

    # -- preparing the job, as a spawn child prepares

    def _setup(self):
        import _procpy
        meta = _fetch_meta(self.call, self.mod, self.key, self.job)
        if meta is None:
            raise _Leave('the job is gone')
        if isinstance(meta, str):
            raise RuntimeError('cluster job %s: %s' % (self.job, meta))
        self.meta = meta
        self.ttl = int(meta.get('ttl') or 30)
        self.wrap = meta.get('wrap_exception', True)
        maxtasks = meta.get('maxtasksperchild')
        self.maxtasks = maxtasks if isinstance(maxtasks, int) and maxtasks >= 1 else None
        main = meta.get('main') or {}
        root = main.get('root') or ''
        files = self._fetch_bundle(main.get('bundle'))
        if files is not None:
            roots = [p for p in (meta.get('sys_path') or ['']) if isinstance(p, str)]
            sys.meta_path.insert(0, _BundleFinder(files, roots, root))
        import gc
        gc.enable()
        argv = meta.get('argv')
        if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            sys.argv[:] = argv       # spawn's preparation does the same
        run_name = main.get('run_name') or '__mp_main__'
        if main.get('module'):
            self._run_main_module(main['module'], run_name)
        elif main.get('path') and files is not None:
            rel = main['path']
            if rel not in files:
                raise RuntimeError('cluster job %s: its code bundle lacks the main script %s'
                                   % (self.job, rel))
            self._run_main(files[rel], _client_path(root, rel), run_name)
        # The initializer may be a __main__ function: decoded only now.
        init, imac = self.call('HMGET', _k_job(self.job), 'init', 'imac') or (None, None)
        if init is None:
            if not self.call('EXISTS', _k_job(self.job)):
                raise _Leave('the job is gone')
            return
        if imac is None or not self.mod.verify(self.key, imac, b'init', self.jb, b'', init):
            raise RuntimeError('cluster job %s: its initializer does not carry a valid MAC; '
                               'not decoded' % self.job)
        initializer, initargs = _procpy.loads(init)
        if initializer is not None:
            initializer(*initargs)

    def _fetch_bundle(self, digest):
        import _procpy
        if not digest:
            return None
        digest = _text(digest)
        files = _bundles.get(digest)
        if files is not None:
            return files
        payload, mac = self.call('HMGET', _k_code(digest), 'p', 'm') or (None, None)
        if payload is None or mac is None:
            if not self.call('EXISTS', _k_job(self.job)):
                raise _Leave('the job is gone')
            raise RuntimeError('cluster job %s: its code bundle %s is missing from Redis'
                               % (self.job, digest))
        if not self.mod.verify(self.key, mac, b'code', digest.encode(), b'', payload):
            _log('procpy worker: job %s: code bundle %s has no valid MAC; not decoded'
                 % (self.job, _k_code(digest)))
            raise RuntimeError('cluster job %s: its code bundle does not carry a valid MAC'
                               % self.job)
        import hashlib
        if hashlib.sha256(payload).hexdigest() != digest:
            raise RuntimeError('cluster job %s: its code bundle does not match its digest %s'
                               % (self.job, digest))
        bundle = _procpy.loads(payload)
        files = {_text(k): v for k, v in dict(bundle.get('files') or {}).items()}
        _bundles[digest] = files
        return files

    def _run_main(self, src, filename, run_name):
        import types
        mod = types.ModuleType(run_name)
        mod.__file__ = filename
        mod.__builtins__ = __builtins__
        sys.modules['__main__'] = sys.modules['__mp_main__'] = mod
        exec(_compile(src, filename), mod.__dict__)

    def _run_main_module(self, name, run_name):
        import runpy
        import types
        mod = types.ModuleType(run_name)
        mod.__dict__.update(runpy.run_module(name, run_name=run_name, alter_sys=True))
        sys.modules['__main__'] = sys.modules['__mp_main__'] = mod

    # -- the task loop

    def _check_leave_request(self):
        # The supervisor only ever says `leave` once a job runs; EOF means it is gone, and
        # nobody would replace this process.
        if select.select([self.ctl], [], [], 0)[0]:
            data = os.read(self.ctl, 4096)
            if not data or b'leave' in data:
                raise _Leave('told to leave')

    def run(self):
        import _thread
        # Alive before it can own a task (the thread's first beat may come late): a consumer
        # without a heartbeat key is dead to the others.
        self.call('SET', _k_hb(self.job, self.consumer), str(os.getpid()), 'PX', _HB_MS)
        _thread.start_new_thread(self._heartbeat, ())
        try:
            try:
                self._setup()
            except _Leave:
                raise
            except BaseException as e:
                self._report_startup_failure(e)
                return 1
            self._reclaim()
            count = _BATCH
            while True:
                self._check_leave_request()
                if self.maxtasks is not None and self.done >= self.maxtasks:
                    raise _Leave('maxtasksperchild')
                n = count if self.maxtasks is None else min(count, self.maxtasks - self.done)
                try:
                    reply = self.call('XREADGROUP', 'GROUP', _GROUP, self.consumer,
                                      'COUNT', n, 'BLOCK', _BLOCK_MS,
                                      'STREAMS', _k_tasks(self.job), '>')
                except self.mod.RedisError as e:
                    # NOGROUP, or UNBLOCKED when the stream is deleted while this read waits.
                    if _gone(e) or not self.call('EXISTS', _k_job(self.job)):
                        raise _Leave('its task stream is gone')
                    raise
                entries = _stream_entries(reply)
                if not entries:
                    if not self.call('EXISTS', _k_job(self.job)):
                        raise _Leave('the job is gone')
                    self._reclaim()
                    continue
                count = self._run_batch(entries)
        except _Leave:
            self.hb_stop = True
            try:
                self.r.call('DEL', _k_hb(self.job, self.consumer))
            except Exception:
                pass
            self._status('done')
            return 0
        finally:
            self.hb_stop = True

    def _report_startup_failure(self, e):
        '''Preparing the main or the initializer raised: the client fails its work with it
        (as a local pool does) after enough of these.'''
        import traceback
        import _procpy
        self._status('failed', ''.join(traceback.format_exception_only(type(e), e)).strip())
        if not isinstance(e, Exception):
            cause = e
            e = RuntimeError('a cluster worker could not start: preparing the main module '
                             'raised %s' % ''.join(
                                 traceback.format_exception_only(type(e), e)).strip())
            e.__cause__ = cause
        traceback.print_exception(type(e), e, e.__traceback__)
        try:
            payload = _procpy.dumps(e)
        except Exception:
            payload = _procpy.dumps(RuntimeError('a cluster worker could not start: %s: %s'
                                                 % (type(e).__name__, e)))
        mac = self.mod.sign(self.key, b'result', self.jb, b'init', payload)
        try:
            self.r.call('XADD', _k_results(self.job), 'NOMKSTREAM', '*', 't', 'init',
                        'p', payload, 'm', mac, 'w', self.consumer)
            self.r.call('DEL', _k_hb(self.job, self.consumer))
        except Exception:
            pass

    def _run_batch(self, entries):
        '''Run the entries, then send their results and acknowledge them in one MULTI.
        Returns how many tasks to read next time: a batch when tasks are quick, else one (a
        slow task must not hold a queue of others that idle workers could run).'''
        start = time.monotonic()
        done_before = self.done
        cmds = []
        ack = []
        for k, (eid, flat) in enumerate(entries):
            ack.append(eid)
            cmd = self._task(eid, _fields(flat))
            if cmd is not None:
                cmds.append(cmd)
            if k + 1 < len(entries) and time.monotonic() - start > 0.05:
                # A slow batch does not hold back the results it has.
                self._send(cmds, ack)
                cmds, ack = [], []
        self._send(cmds, ack)
        self._status('ran', count=self.done - done_before)
        per = (time.monotonic() - start) / max(1, len(entries))
        return _BATCH if per < 0.005 else 1

    def _send(self, cmds, ack):
        if not ack:
            return
        tasks = _k_tasks(self.job)
        cmds = cmds + [('XACK', tasks, _GROUP) + tuple(ack), ('XDEL', tasks) + tuple(ack)]
        replies = self.pipeline(cmds, transaction=True)
        n = len(cmds) - 2
        # XADD NOMKSTREAM answers nil when the results stream is gone: the job ended.
        if replies is not None and any(x is None for x in list(replies)[:n]):
            raise _Leave('its results stream is gone')

    def _task(self, eid, f):
        t, p, m = f.get('t'), f.get('p'), f.get('m')
        if t is None or p is None or m is None or \
                not self.mod.verify(self.key, m, b'task', self.jb, _b(t), p):
            _log('procpy worker: job %s: entry %s of %s has no valid MAC; dropped, not decoded'
                 % (self.job, _text(eid), _k_tasks(self.job)))
            return None
        out = self._execute(p)
        self.done += 1
        return self._result_cmd(t, out)

    def _result_cmd(self, t, out):
        mac = self.mod.sign(self.key, b'result', self.jb, _b(t), out)
        return ('XADD', _k_results(self.job), 'NOMKSTREAM', '*', 't', t, 'p', out, 'm', mac,
                'w', self.consumer)

    def _execute(self, payload):
        '''Run one task exactly as multiprocessing.pool.worker does; the encoded outcome.'''
        pool = self.pool
        dumps, loads = self.dumps, self.loads
        wrap = self.wrap
        try:
            task = loads(payload)
            if len(task) == 4:
                if pool._tracing:
                    result = pool._traced_task(task)
                else:
                    func, args, kwds, _index = task
                    result = (True, func(*args, **kwds))
            else:
                func, args, kwds = task
                result = (True, func(*args, **kwds))
        except Exception as e:
            if wrap:
                e = pool.ExceptionWithTraceback(e, e.__traceback__)
            result = (False, e)
        try:
            return dumps(result)
        except Exception as e:
            if wrap == 'futures':
                return dumps((True, (False, pool.ExceptionWithTraceback(e, e.__traceback__))))
            return dumps((False, pool.MaybeEncodingError(e, result[1])))
        finally:
            task = func = args = kwds = result = None

    # -- taking over the tasks of dead consumers

    def _reclaim(self):
        '''Take over, one at a time, the tasks of consumers whose heartbeat is gone.'''
        while self._reclaim_one():
            self._check_leave_request()

    def _reclaim_one(self):
        tasks = _k_tasks(self.job)
        try:
            got = self.call('EVAL', _RECLAIM_LUA, 1, tasks, _GROUP, self.consumer,
                            _k_hb(self.job, ''), _k_died(self.job, ''))
        except self.mod.RedisError as e:
            if _gone(e):
                raise _Leave('its task stream is gone')
            raise
        if not got:
            return False
        eid, flat, count, dead, cause = got
        f = _fields(flat or [])
        t = f.get('t')
        if t is None:
            # Deleted meanwhile, or not a task: nothing to run.
            self._send([], [eid])
            return True
        lost = _k_lost(self.job, _text(t))
        _, _, victims = self.pipeline([
            ('RPUSH', lost, '%s: %s' % (_text(dead),
                                        _text(cause) if cause else 'stopped sending heartbeats')),
            ('EXPIRE', lost, self.ttl),
            ('LRANGE', lost, 0, -1),
        ])
        # Each of its `count` deliveries went to a worker that died: that is enough.
        if int(count) >= _MAX_DELIVERIES:
            self._fail_lost(eid, f, [_text(v) for v in victims])
        else:
            self._run_batch([(eid, flat)])
        return True

    def _fail_lost(self, eid, f, victims):
        import _procpy
        t, p, m = f.get('t'), f.get('p'), f.get('m')
        if p is None or m is None or not self.mod.verify(self.key, m, b'task', self.jb,
                                                         _b(t), p):
            _log('procpy worker: job %s: entry %s of %s has no valid MAC; dropped, not decoded'
                 % (self.job, _text(eid), _k_tasks(self.job)))
            self._send([], [eid])
            return
        out = _procpy.dumps((False, _lost_error(_text(t), victims)))
        self._send([self._result_cmd(t, out)], [eid])


def serve_stdin():
    '''Entry point of a supervisor's worker process: wait (warm) for a job on stdin.'''
    import json
    import signal
    # Ctrl-C at the supervisor's terminal reaches the whole process group: the supervisor
    # decides what its processes do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Warm up what every job needs before the job arrives.
    import _procpy_cluster  # noqa: F401
    import multiprocessing.pool  # noqa: F401
    import linecache  # noqa: F401
    import importlib.util  # noqa: F401
    # Unbuffered: what follows the job line (`leave`) must stay in the pipe for select().
    line = b''
    while not line.endswith(b'\n'):
        data = os.read(0, 1)
        if not data:
            return
        line += data
    if line.strip() == b'leave':
        return
    msg = json.loads(line)
    # Tasks get /dev/null as stdin, as pool workers do; the supervisor's pipe moves aside.
    ctl = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        sys.stdin = open(os.devnull)
    except OSError:
        pass
    w = _JobWorker(msg['url'], bytes.fromhex(msg['key']), msg['job'], msg['consumer'],
                   msg.get('status_fd'), ctl)
    code = w.run()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    sys.exit(code)
