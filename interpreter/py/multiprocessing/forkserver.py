# The fork server: a single-threaded process, started once, that has the main script
# preloaded and forks a child for each request.
import os
import _signal as signal
import sys

import _procpy

from . import spawn, util

_server = None          # (owner pid, address, boot fd, server pid)
_preload = ['__main__']


def set_forkserver_preload(modules_names):
    global _preload
    if not all(type(mod) is str for mod in modules_names):
        raise TypeError('module_names must be a list of strings')
    _preload = list(modules_names)


def ensure_running():
    '''Start the server if this process has none; return its address.'''
    global _server
    if _server is not None and _server[0] == os.getpid():
        return _server[1]
    listener, address = _procpy.forkserver_listen()
    prep = spawn.get_preparation_data('ForkServer')
    payload = _procpy.dumps((prep, list(_preload)))
    util._flush_std_streams()
    try:
        pid, boot = _procpy.spawn_child(spawn.get_executable(),
                                        ['--multiprocessing-forkserver'], payload, [listener])
    finally:
        _procpy.close_fds([listener])
    _server = (os.getpid(), address, boot, pid)
    return address


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
    prep, preload = _procpy.loads(payload)
    listener = fds[0]
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
        except (OSError, SyntaxError):
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
    children = {}   # pidfd -> (pid, connection to the requesting parent)
    while True:
        ready = _procpy.wait([listener, boot] + list(children))
        if boot in ready:
            # Our parent has exited.
            break
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
                _procpy.close_fds([conn, fd])
        if listener in ready:
            req = _procpy.forkserver_accept(listener)
            if req is None:
                continue
            conn, body, cfds = req
            util._flush_std_streams()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    others = [listener, boot]
                    for pfd, (_, c) in children.items():
                        others += [pfd, c]
                    _procpy.close_fds(others)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
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
            _procpy.close_fds(cfds)
            if _procpy.trace_enabled():
                import _procpy_trace
                _procpy_trace.instant('fork', 'process', {'pid': pid})
            try:
                _procpy.send_i64(conn, pid)
            except OSError:
                pass
            children[_procpy.pidfd_open(pid)] = (pid, conn)
    sys.exit(0)
