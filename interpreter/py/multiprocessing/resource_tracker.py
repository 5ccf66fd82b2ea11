# The client side of procpy's resource tracker (the tracker itself is Rust, interpreter/src/
# tracker.rs: the procpy binary re-entered with a private flag, no Python VM). One tracker per
# program tree: every process holds the write end of its pipe, and once all have exited —
# normally or killed — it unlinks whatever is still registered and warns on stderr.
import _procpy

__all__ = ['ensure_running', 'register', 'unregister']

# How the tracker releases each resource type (CPython's table; code iterates it to learn the
# types). procpy's semaphores live in memory files that vanish with their last user, never
# named ones, so 'semaphore' is not a type here.
_CLEANUP_FUNCS = {
    'noop': lambda name: None,
    'shared_memory': _procpy.shm_unlink,
}


class ResourceTracker(object):

    @property
    def _fd(self):
        return _procpy.tracker_getfd()

    @property
    def _pid(self):
        return _procpy.tracker_pid()

    def getfd(self):
        return _procpy.tracker_getfd()

    def ensure_running(self):
        '''Make sure that the resource tracker process is running.'''
        _procpy.tracker_getfd()
        if self._check_alive():
            return
        # Killed (its pipe is broken): reap it if it is ours, and start another, as CPython.
        import warnings
        _procpy.tracker_reset()
        warnings.warn('resource_tracker: process died unexpectedly, '
                      'relaunching.  Some resources might leak.')
        _procpy.tracker_getfd()

    def _check_alive(self):
        '''Check that the tracker process is alive (a probe it ignores).'''
        try:
            _procpy.tracker_send(b'PROBE:0:noop\n')
        except OSError:
            return False
        return True

    def register(self, name, rtype):
        '''Register name of resource with resource tracker.'''
        self._send('REGISTER', name, rtype)

    def unregister(self, name, rtype):
        '''Unregister name of resource with resource tracker.'''
        self._send('UNREGISTER', name, rtype)

    def _send(self, cmd, name, rtype):
        _procpy.tracker_getfd()
        msg = '{0}:{1}:{2}\n'.format(cmd, name, rtype).encode('ascii')
        if len(msg) > 512:
            # One write below PIPE_BUF is atomic: lines of concurrent writers never mix.
            raise ValueError('msg too long')
        try:
            _procpy.tracker_send(msg)
        except BrokenPipeError:
            # Only if someone killed the tracker itself: start another one, as CPython does.
            import warnings
            _procpy.tracker_reset()
            warnings.warn('resource_tracker: process died unexpectedly, '
                          'relaunching.  Some resources might leak.')
            _procpy.tracker_send(msg)


_resource_tracker = ResourceTracker()
ensure_running = _resource_tracker.ensure_running
register = _resource_tracker.register
unregister = _resource_tracker.unregister
getfd = _resource_tracker.getfd
