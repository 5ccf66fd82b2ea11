# Mains that are not a source file, run as python3 runs them: a directory or zip archive
# (through its `__main__` module) and compiled bytecode (.pyc). Used by boot.rs for the
# parent and by multiprocessing.spawn for the children's re-import.
import sys


def run_path_entry():
    '''`python3 DIR` / `python3 APP.zip` (the entry is already first on sys.path).'''
    import runpy
    # As CPython: `__main__` found on sys.path[0] and run in the existing __main__ module,
    # sys.argv[0] left as given.
    runpy._run_module_as_main('__main__', False)


def load_pyc(path):
    '''The code object of a .pyc file made by procpy (16-byte header, then marshal data).'''
    import _procpy
    from importlib.util import MAGIC_NUMBER
    with open(path, 'rb') as f:
        data = f.read()
    if data[:4] != MAGIC_NUMBER:
        raise RuntimeError(
            f'Bad magic number in .pyc file {path!r}: {bytes(data[:4])!r}, procpy expects '
            f'{MAGIC_NUMBER!r}. A .pyc holds the bytecode of the Python that compiled it '
            f'(CPython\'s cannot run on RustPython): compile the source with procpy '
            f'(procpy -m py_compile FILE.py) or run the .py file.')
    return _procpy.marshal_loads(data[16:])


def run_pyc(path, globals):
    exec(load_pyc(path), globals)
