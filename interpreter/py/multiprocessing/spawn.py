# Starting a child in a fresh interpreter: what it needs to know, and how it becomes the
# process object it was sent.
import os
import sys
import types

import _procpy

from . import process

__all__ = ['freeze_support', 'set_executable', 'get_executable', 'get_preparation_data',
           'get_command_line', 'import_main_path']

_executable = None


def set_executable(exe):
    global _executable
    _executable = os.fsdecode(exe) if exe is not None else None


def get_executable():
    # /proc/self/exe still runs this binary after it was replaced or deleted on disk (a
    # rebuild, an upgrade) where its path would fail.
    if _executable:
        return _executable
    return '/proc/self/exe' if os.path.exists('/proc/self/exe') else _procpy.current_exe()


def child_args():
    return ['--multiprocessing-spawn-child']


def get_command_line(**kwds):
    '''The command line a spawned child starts with (its boot data comes on a descriptor).'''
    return [get_executable()] + child_args()


def freeze_support():
    '''Nothing to do: procpy is never a frozen Windows executable.'''


def import_main_path(main_path):
    '''Set sys.modules['__main__'] to the module at main_path, as a spawned child does.'''
    _fixup_main_from_path(main_path)


def _parent_sentinel(pid):
    '''A descriptor that becomes readable when process `pid` exits.'''
    try:
        return _procpy.pidfd_open(pid)
    except OSError:
        # Already gone: a pipe whose writer is closed is "ready" at once.
        r, w = os.pipe()
        os.close(w)
        return r


def _check_not_importing_main():
    if getattr(process.current_process(), '_inheriting', False):
        raise RuntimeError('''
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase.

        This probably means that you are not using fork to start your
        child processes and you have forgotten to use the proper idiom
        in the main module:

            if __name__ == '__main__':
                freeze_support()
                ...

        The "freeze_support()" line can be omitted if the program
        is not going to be frozen to produce an executable.

        To fix this issue, refer to the "Safe importing of main module"
        section in https://docs.python.org/3/library/multiprocessing.html
        ''')


def get_preparation_data(name):
    '''Return info about parent needed by child to unpickle process object'''
    _check_not_importing_main()
    d = dict(
        name=name,
        authkey=bytes(process.current_process().authkey),
        parent_pid=os.getpid(),
    )
    from . import util
    if util._logger is not None:
        d['log_level'] = util._logger.getEffectiveLevel()
        d['log_to_stderr'] = util._log_to_stderr
    sys_path = sys.path.copy()
    try:
        i = sys_path.index('')
    except ValueError:
        pass
    else:
        if process.ORIGINAL_DIR is not None:
            sys_path[i] = process.ORIGINAL_DIR
    d.update(
        sys_path=sys_path,
        sys_argv=sys.argv,
        orig_dir=process.ORIGINAL_DIR,
        dir=os.getcwd(),
        start_method=_start_method(),
    )
    # CPython's rules: a main run by name (`-m mod`, and `__main__` for a directory or zip,
    # which children then leave alone) is re-imported by name, a script by path, and a main
    # with neither (`-c`, the interactive prompt, stdin) not at all.
    main_module = sys.modules['__main__']
    spec = getattr(main_module, '__spec__', None)
    main_mod_name = getattr(spec, 'name', None)
    if main_mod_name is not None:
        d['init_main_from_name'] = main_mod_name
    else:
        main_path = getattr(main_module, '__file__', None)
        if main_path is not None:
            if not os.path.isabs(main_path) and process.ORIGINAL_DIR is not None:
                main_path = os.path.join(process.ORIGINAL_DIR, main_path)
            d['init_main_from_path'] = os.path.normpath(main_path)
    return d


def _start_method():
    from . import context
    return context._default_context.get_start_method()


def prepare(data):
    '''Make this interpreter look like the parent before the process object is decoded.'''
    # procpy boots children with cyclic collection off (see boot.rs); user code gets it on.
    import gc
    gc.enable()
    if 'name' in data:
        process.current_process().name = data['name']
    if 'authkey' in data:
        process.current_process().authkey = data['authkey']
    if 'log_to_stderr' in data and data['log_to_stderr']:
        from . import util
        util.log_to_stderr()
    if 'log_level' in data:
        from . import util
        util.get_logger().setLevel(data['log_level'])
    if 'sys_path' in data:
        sys.path = data['sys_path']
    if 'sys_argv' in data:
        sys.argv = data['sys_argv']
    if 'dir' in data:
        os.chdir(data['dir'])
    if 'orig_dir' in data:
        process.ORIGINAL_DIR = data['orig_dir']
    if 'start_method' in data:
        from . import context
        context._force_start_method(data['start_method'])
    if 'init_main_from_name' in data:
        _fixup_main_from_name(data['init_main_from_name'])
    elif 'init_main_from_path' in data:
        _fixup_main_from_path(data['init_main_from_path'])


def _install_main(mod):
    sys.modules['__main__'] = sys.modules['__mp_main__'] = mod


def _fixup_main_from_name(mod_name):
    current_main = sys.modules['__main__']
    # One rule, shared with the codec (what it must send by value follows from it).
    if not _procpy.children_rerun_main(mod_name, None):
        return
    if getattr(current_main.__spec__, 'name', None) == mod_name:
        return
    import runpy
    main_module = types.ModuleType('__mp_main__')
    main_content = runpy.run_module(mod_name, run_name='__mp_main__', alter_sys=True)
    main_module.__dict__.update(main_content)
    _install_main(main_module)


def _fixup_main_from_path(main_path):
    '''Run the parent's main script as `__mp_main__` (so code outside the
    `if __name__ == '__main__':` guard runs again here, as in CPython).'''
    current_main = sys.modules['__main__']
    # As CPython: IPython's launch script has no `__main__` guard, so it is never re-run.
    if not _procpy.children_rerun_main(None, main_path):
        return
    if getattr(current_main, '__file__', None) == main_path:
        return
    main_module = types.ModuleType('__mp_main__')
    main_module.__file__ = main_path
    main_module.__builtins__ = __builtins__
    _install_main(main_module)
    code = _main_code.get(main_path)
    if code is None:
        code = precompile_main(main_path)
    exec(code, main_module.__dict__)


# The fork server compiles the main script once; each child it forks only executes it.
_main_code = {}


def precompile_main(main_path):
    if main_path.endswith('.pyc'):
        # Compiled bytecode (`procpy script.pyc`): its code object, not a source to compile.
        import _procpy_main
        code = _procpy_main.load_pyc(main_path)
    else:
        with open(main_path, 'rb') as f:
            source = f.read()
        code = compile(source, main_path, 'exec')
    _main_code[main_path] = code
    return code


def _run_child(prep, obj_bytes, fds):
    '''Become the process object: prepare, decode it, bootstrap. Returns the exit code.'''
    process.current_process()._inheriting = True
    try:
        try:
            prepare(prep)
        except BaseException as e:
            _report_startup_error(e, obj_bytes, fds)
            raise
        process_obj = _procpy.loads_with_fds(obj_bytes, fds)
    finally:
        _procpy.close_fds(fds)
        del process.current_process()._inheriting
    return process_obj._bootstrap(parent_sentinel=_parent_sentinel(prep['parent_pid']))


def _report_startup_error(exc, obj_bytes, fds):
    '''The main module could not be prepared (it raised, or is gone): a target that can say so
    to its parent (a pool worker, see pool.py) does, so the parent fails its work with this
    exception instead of starting workers that die the same way.'''
    try:
        process_obj = _procpy.loads_with_fds(obj_bytes, fds)
        report = getattr(process_obj._target, '_startup_error_reporter', None)
        if report is not None:
            report(exc, *process_obj._args, **process_obj._kwargs)
    except Exception:
        pass    # the traceback the child prints is all there is


def _child_main():
    '''Entry point of `procpy --multiprocessing-spawn-child`.'''
    payload, fds, _boot = _procpy.recv_boot()
    prep, obj_bytes = _procpy.loads(payload)
    sys.exit(_run_child(prep, obj_bytes, fds))
