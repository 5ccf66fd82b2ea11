# How a child is started under each method. The heavy lifting (exec, descriptor passing, the
# fork-server protocol, exit sentinels) is native, in `_procpy`.
import os
# The native `_signal`: `signal` builds enums at import, ~9 ms in RustPython.
import _signal as signal

import _procpy

from . import context, spawn, util

# procpy --trace (fixed for the life of the process).
_tracing = _procpy.trace_enabled()
if _tracing:
    import _procpy_trace as _trace


def _exitcode(status):
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _reserve_fd():
    '''Hold a descriptor for the sentinel of a child about to start: out of descriptors,
    start() then fails before there is a child (CPython's opens its pipes first).'''
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _sentinel(pid, reserve):
    '''The started child's pidfd, in the slot `reserve` held. Should another thread take the
    slot meanwhile, the child is killed and reaped rather than left running unwatched.'''
    os.close(reserve)
    try:
        return _procpy.pidfd_open(pid)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise


class _Popen(object):
    method = None

    def __init__(self, process_obj):
        util._flush_std_streams()
        self.returncode = None
        # What _launch opens (the sentinel among them), appended as each one is opened.
        self._fds = []
        try:
            if _tracing:
                t0 = _trace.now()
                self._launch(process_obj)
                _trace.started(t0, process_obj.name, self.pid, self.method)
            else:
                self._launch(process_obj)
        except BaseException:
            _procpy.close_fds(self._fds)
            raise
        # As CPython: the descriptors live as long as this object, so p.sentinel stays valid
        # until the Process is closed or freed, and not a moment longer. Closed natively when
        # freed (CPython's util.Finalize would run Python code wherever that happens; see
        # native/fds.rs).
        self._fds = _procpy.Descriptors(self._fds)

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            try:
                pid, sts = os.waitpid(self.pid, flag)
            except OSError:
                # Not our child any more (already reaped elsewhere).
                return None
            if pid == self.pid:
                self.returncode = _exitcode(sts)
                if _tracing:
                    _trace.exit(self.returncode, self.pid)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if timeout is not None:
                if not _procpy.wait([self.sentinel], timeout):
                    return None
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            except OSError:
                if self.wait(timeout=0.1) is None:
                    raise

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        self._fds.close()

    def _encode(self, process_obj):
        '''Encode what a fresh interpreter needs: preparation data, then the process object
        (whose handles travel as descriptors).'''
        prep = spawn.get_preparation_data(process_obj._name)
        context.set_spawning_popen(self)
        try:
            obj_bytes, fds = _procpy.dumps_for_child(process_obj)
        finally:
            context.set_spawning_popen(None)
        return _procpy.dumps((prep, obj_bytes)), fds


class PopenFork(_Popen):
    method = 'fork'

    def _launch(self, process_obj):
        parent_pid = os.getpid()
        # One resource tracker per program tree: started (once) before the first child, so
        # every child shares it (CPython starts one lazily in whichever process first creates
        # shared memory, so a fork child's own tracker would unlink its segments as it exits).
        _procpy.tracker_getfd()
        reserve = _reserve_fd()
        # `__main__` functions made after the first fork are missing in its children.
        _procpy.note_fork()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(reserve)
                code = process_obj._bootstrap(parent_sentinel=spawn._parent_sentinel(parent_pid))
            finally:
                os._exit(code)
        self.pid = pid
        self.sentinel = _sentinel(pid, reserve)
        self._fds.append(self.sentinel)


class PopenSpawn(_Popen):
    method = 'spawn'

    def _launch(self, process_obj):
        payload, fds = self._encode(process_obj)
        reserve = _reserve_fd()
        try:
            self.pid, boot = _procpy.spawn_child(spawn.get_executable(), spawn.child_args(),
                                                 payload, fds)
        except BaseException:
            os.close(reserve)
            raise
        self._fds.append(boot)
        self.sentinel = _sentinel(self.pid, reserve)
        self._fds.append(self.sentinel)


class PopenForkServer(_Popen):
    method = 'forkserver'

    def _launch(self, process_obj):
        from . import forkserver
        payload, fds = self._encode(process_obj)
        self.pid, self.sentinel = forkserver.request(payload, fds)
        self._fds.append(self.sentinel)

    def poll(self, flag=os.WNOHANG):
        # The child is the server's, not ours: the server reports its status on the sentinel.
        if self.returncode is None:
            if flag == os.WNOHANG and not _procpy.wait([self.sentinel], 0):
                return None
            code = _procpy.recv_i64(self.sentinel)
            self.returncode = 255 if code is None else code
            if _tracing:
                _trace.exit(self.returncode, self.pid)
            if code is not None:
                # The server closes the socket right after writing the status; wait for that
                # close, so the sentinel is ready from now on (join() then wait() must agree).
                _procpy.recv_i64(self.sentinel)
        return self.returncode
