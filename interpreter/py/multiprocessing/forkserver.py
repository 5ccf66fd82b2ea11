# The fork server: a single-threaded process, started once, that has the main script
# preloaded and forks a child for each request. Only its owner can ask: the socket sits in a
# private directory, the server checks the peer's uid and an HMAC challenge over a per-server
# key before it reads a request (interpreter/src/forkserver.rs; docs/reliability.md).
import os
import _signal as signal
import sys

import _procpy

from . import spawn, util

# CPython's list has get_inherited_fds and connect_to_new_process too: procpy's children get
# their descriptors from the native protocol, and those names do not exist here.
__all__ = ['ensure_running', 'set_forkserver_preload']

_server = None          # (owner pid, address, boot fd, server pid, key)
_retired = []           # servers replaced while still alive: (boot fd, server pid)
_preload = ['__main__']
_lock = util.ForkAwareThreadLock()
# What the answer to the server's challenge covers before its nonce (tests speak the protocol).
_CHALLENGE_TAG = _procpy._forkserver_challenge_tag


def set_forkserver_preload(modules_names):
    global _preload
    if not all(type(mod) is str for mod in modules_names):
        raise TypeError('module_names must be a list of strings')
    _preload = list(modules_names)


def _alive(server):
    # The server never writes on its boot socket: readable means hung up, i.e. it has exited
    # (or is exiting). Unlike waitpid, this also holds if someone else reaped it.
    return not _procpy.wait([server[2]], 0)


def _forget(server):
    '''A dead server: reap it, close our end of its boot socket, remove its socket.'''
    try:
        os.waitpid(server[3], 0)
    except ChildProcessError:
        pass
    _procpy.close_fds([server[2]])
    _procpy.forkserver_cleanup(server[1])


def _start():
    global _server
    listener, address = _procpy.forkserver_listen()
    try:
        # A fresh secret per server; it reaches the server only through its private boot
        # socket (never argv or the environment, which other users can read).
        key = _procpy.random_key()
        prep = spawn.get_preparation_data('ForkServer')
        payload = _procpy.dumps((prep, list(_preload), key, address))
        util._flush_std_streams()
        pid, boot = _procpy.spawn_child(spawn.get_executable(),
                                        ['--multiprocessing-forkserver'], payload, [listener])
    except BaseException:
        _procpy.forkserver_cleanup(address)
        raise
    finally:
        _procpy.close_fds([listener])
    _server = (os.getpid(), address, boot, pid, key)
    # The server removes its socket when it exits; so do we at our exit, at once (the server
    # notices our exit a moment later).
    util.Finalize(None, _procpy.forkserver_cleanup, args=(address,), exitpriority=-100)


def _ensure():
    global _server
    with _lock:
        if _server is not None and _server[0] == os.getpid():
            if _alive(_server):
                return _server
            _forget(_server)
        _server = None
        _start()
        return _server


def ensure_running():
    '''Start the server if this process has none running; return its address.'''
    return _ensure()[1]


class ForkServer(object):
    '''CPython's private singleton (`forkserver._forkserver`), a view of this module's state.'''

    def set_forkserver_preload(self, modules_names):
        set_forkserver_preload(modules_names)

    def ensure_running(self):
        ensure_running()

    @property
    def _forkserver_address(self):
        server = _server
        return server[1] if server is not None and server[0] == os.getpid() else None

    @property
    def _forkserver_pid(self):
        server = _server
        return server[3] if server is not None and server[0] == os.getpid() else None

    @property
    def _preload_modules(self):
        return list(_preload)


_forkserver = ForkServer()


def _recover(server, why):
    '''A request to `server` was not answered (`why`: 'refused', 'missing' or 'hangup'); no
    child was started. Replace the server if it is dead, dying or unreachable.'''
    global _server
    with _lock:
        if _server is not server:
            return      # another thread already did
        boot = server[2]
        if why == 'hangup':
            # It took the connection, then closed it: it died (its boot socket hangs up at the
            # same moment), or it is alive and dropped that one connection: then retry.
            if not _procpy.wait([boot], 5.0):
                return
            _forget(server)
        elif _procpy.wait([boot], 60.0 if why == 'refused' else 1.0):
            # No listener: the server is exiting (or gone).
            _forget(server)
        else:
            # Alive, but its socket is gone (removed by a /tmp cleaner?): start another. This one
            # still reports its children's exit statuses, and ends when we do.
            _retired.append((boot, server[3]))
        _server = None
        _start()


def request(payload, fds):
    '''Have the fork server start a child: returns (pid, sentinel). A dead server is replaced
    and the request retried, once.'''
    server = _ensure()
    for attempt in range(2):
        res = _procpy.forkserver_request(server[1], server[4], payload, fds)
        if not isinstance(res, str):
            return res
        _recover(server, res)
        server = _ensure()
    raise ConnectionError('the fork server (pid %d) hung up before starting the child (%s), '
                          'also after a restart' % (server[3], res))


def _preload_stdlib_imports(main_path):
    '''Import, once, the standard-library modules the main script imports at top level, so each
    forked child finds them in sys.modules. Only the standard library: its import has no effect
    a script could see, unlike the script's own modules.'''
    import ast
    stdlib = getattr(sys, 'stdlib_module_names', ())
    with open(main_path, 'rb') as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split('.')[0] in stdlib:
                try:
                    __import__(name)
                except Exception:
                    pass


def _server_main():
    '''Entry point of `procpy --multiprocessing-forkserver`.'''
    payload, fds, boot = _procpy.recv_boot()
    prep, preload, key, address = _procpy.loads(payload)
    # From here the listener is the gate's: it authenticates every client before reading a
    # byte of its request (interpreter/src/forkserver.rs).
    _procpy.forkserver_gate_open(fds[0], key, address)
    del key
    try:
        _serve(prep, preload, boot)
    finally:
        _procpy.forkserver_gate_close(True)
    sys.exit(0)


def _serve(prep, preload, boot):
    # The server is nobody's "current process": children get their name from each request.
    # Like CPython 3.11, the server does not run the main script: each child does (so code
    # outside the `__main__` guard runs per child). It is compiled here, once.
    main_path = prep.pop('init_main_from_path', None)
    prep.pop('init_main_from_name', None)
    spawn.prepare(prep)
    if main_path is not None and '__main__' in preload:
        try:
            spawn.precompile_main(main_path)
            _preload_stdlib_imports(main_path)
        except (OSError, SyntaxError, RuntimeError, ValueError):
            # Each child meets (and reports) the same error when it runs the main itself.
            pass
    for mod in preload:
        if mod != '__main__':
            try:
                __import__(mod)
            except ImportError:
                pass
    # Everything loaded so far lives as long as the server: keep it out of the children's
    # collections (they would walk, and so copy, every page of it), as CPython's docs advise
    # before forking (gc.freeze).
    import gc
    gc.collect()
    gc.freeze()
    # Ctrl-C goes to the whole process group: the parent handles it, the server carries on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Asked to end: end through the `finally` that removes the socket and its directory. The
    # wakeup pipe makes a signal that lands just before the loop blocks wake it anyway.
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    children = {}   # pidfd -> (pid, connection to the requesting parent)
    while True:
        watch, timeout = _procpy.forkserver_gate_watch()
        ready = _procpy.wait([boot, sig_r] + list(children) + watch, timeout)
        if boot in ready:
            # Our parent has exited.
            break
        if sig_r in ready:
            # The handler runs (and raises SystemExit) at the next instruction.
            try:
                os.read(sig_r, 512)
            except BlockingIOError:
                pass
        for fd in ready:
            if fd in children:
                pid, conn = children.pop(fd)
                _, sts = os.waitpid(pid, 0)
                try:
                    _procpy.send_i64(conn, os.waitstatus_to_exitcode(sts)
                                     if hasattr(os, 'waitstatus_to_exitcode')
                                     else (-os.WTERMSIG(sts) if os.WIFSIGNALED(sts)
                                           else os.WEXITSTATUS(sts)))
                except OSError:
                    pass
                # The pidfd first: once the parent sees the connection close, this child has
                # left no trace here.
                _procpy.close_fds([fd, conn])
        for conn, body, cfds in _procpy.forkserver_gate_service(ready):
            try:
                _start_child(conn, body, cfds, (boot, sig_r, sig_w), children)
            except Exception as e:
                # Whatever went wrong concerns this request only: say so, serve the next.
                _refuse(conn, cfds, e, 'cannot start the child')


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _refuse(conn, cfds, exc, what):
    errno = getattr(exc, 'errno', None) or 5     # EIO when the error has no errno
    detail = getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__
    _procpy.forkserver_reply_error(conn, errno, 'fork server: %s: %s' % (what, detail))
    _procpy.close_fds([conn] + list(cfds))


def _start_child(conn, body, cfds, own_fds, children):
    util._flush_std_streams()
    # The child waits for a go on this pipe, whose write end goes to the client with the pid:
    # a server that dies before that (the client then retries with a new server) leaves no
    # child running, and one killed after it leaves a child that runs, as under CPython.
    try:
        go_r, go_w = os.pipe()
    except OSError as e:
        _refuse(conn, cfds, e, 'cannot start the child')
        return
    # SIGTERM/SIGHUP stay blocked across the fork: one sent to the child (terminate() right
    # after start()) before it drops our handlers waits, and then ends it as it should.
    _procpy.forkserver_block_signals(True)
    try:
        pid = os.fork()
    except OSError as e:
        _procpy.forkserver_block_signals(False)
        _procpy.close_fds([go_r, go_w])
        _refuse(conn, cfds, e, 'cannot fork')
        return
    if pid == 0:
        code = 1
        try:
            _procpy.forkserver_child_signals()
            signal.set_wakeup_fd(-1)
            others = list(own_fds) + [conn, go_w]
            for pfd, (_, c) in children.items():
                others += [pfd, c]
            _procpy.forkserver_gate_close(False)
            _procpy.close_fds(others)
            go = os.read(go_r, 1)
            os.close(go_r)
            if go != b'\x01':
                os._exit(1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)      # Python's table, to match the C level
            child_prep, obj_bytes = _procpy.loads(body)
            code = spawn._run_child(child_prep, obj_bytes, cfds)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            util._flush_std_streams()
            os._exit(code)
    _procpy.forkserver_block_signals(False)
    _procpy.close_fds([go_r] + list(cfds))
    try:
        pidfd = _procpy.pidfd_open(pid)
    except OSError as e:
        # Without a pidfd we could not report its exit: the child goes before it runs.
        os.close(go_w)
        os.waitpid(pid, 0)
        _refuse(conn, (), e, 'cannot watch the child')
        return
    children[pidfd] = (pid, conn)
    if _procpy.trace_enabled():
        import _procpy_trace
        _procpy_trace.instant('fork', 'process', {'pid': pid})
    try:
        _procpy.forkserver_reply_pid(conn, pid, go_w)
    except OSError:
        pass    # the client is gone: no go, the child exits at once and is reaped as usual
    os.close(go_w)
