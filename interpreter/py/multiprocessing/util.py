# Exit-time housekeeping and logging helpers.
import atexit
import sys

import _procpy

SUBDEBUG = 5
DEBUG = 10
INFO = 20
SUBWARNING = 25

LOGGER_NAME = 'multiprocessing'
_logger = None
_log_to_stderr = False
_exiting = False


def sub_debug(msg, *args):
    if _logger:
        _logger.log(SUBDEBUG, msg, *args)


def debug(msg, *args):
    if _logger:
        _logger.log(DEBUG, msg, *args)


def info(msg, *args):
    if _logger:
        _logger.log(INFO, msg, *args)


def get_logger():
    global _logger
    import logging
    if not _logger:
        _logger = logging.getLogger(LOGGER_NAME)
        _logger.propagate = 0
    return _logger


def log_to_stderr(level=None):
    global _log_to_stderr
    import logging
    _log_to_stderr = True
    logger = get_logger()
    formatter = logging.Formatter('[%(levelname)s/%(processName)s] %(message)s')
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    return logger


def _flush_std_streams():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (AttributeError, ValueError):
            pass


def _close_stdin():
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        import os
        # An explicit encoding: a default one would import `locale`, which costs RustPython
        # ~15 ms in every forked child.
        sys.stdin = open(os.devnull, encoding='utf-8')
    except (OSError, ValueError):
        pass


def _exit_function():
    '''At exit: terminate daemonic children, join the others, flush queue feeders.'''
    global _exiting
    if _exiting:
        return
    _exiting = True
    from . import process
    # Pools first (CPython's pool finalizer has priority 15): their managers must not
    # replace the workers terminated below.
    pool = sys.modules.get('multiprocessing.pool')
    if pool is not None:
        pool._terminate_at_exit()
    for p in process.active_children():
        if p.daemon:
            info('calling terminate() for daemon %s', p.name)
            p._popen.terminate()
    for p in process.active_children():
        info('calling join() for process %s', p.name)
        p.join()
    _procpy._flush_queues()


def is_exiting():
    return _exiting


atexit.register(_exit_function)
