# operator.length_hint with any int default (RustPython 0.5.0 wanted a usize: -1 raised
# OverflowError; tqdm's process_map passes -1), in the parent and in a child.
# Run as: <interpreter> fixes_length_hint.py <start-method>
import _operator
import multiprocessing
import operator
import sys
from operator import length_hint


class NoHint:
    pass


class Hint:
    def __init__(self, value):
        self.value = value

    def __length_hint__(self):
        return self.value


class LenRaisesTypeError:
    def __len__(self):
        raise TypeError("no len")

    def __length_hint__(self):
        return 9


class HintRaises:
    def __init__(self, exc):
        self.exc = exc

    def __length_hint__(self):
        raise self.exc


def show(label, *args):
    try:
        print(label, length_hint(*args))
    except Exception as e:
        print(label, type(e).__name__, e)


def hints(defaults):
    out = []
    for d in defaults:
        out.append((length_hint([1, 2, 3], d), length_hint(iter(range(4)), d),
                    length_hint((i for i in range(3)), d), length_hint(NoHint(), d)))
    return out


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    print("same function:", operator.length_hint is _operator.length_hint)
    for default in (0, 5, -1, -(2 ** 70), 2 ** 70):
        show(f"default {default}:", NoHint(), default)
        show(f"list {default}:", [1, 2], default)
        show(f"iterator {default}:", iter([1, 2, 3]), default)
        show(f"generator {default}:", (i for i in range(3)), default)
        show(f"hint 4, default {default}:", Hint(4), default)
        show(f"NotImplemented, default {default}:", Hint(NotImplemented), default)
        show(f"negative hint, default {default}:", Hint(-1), default)
        show(f"str hint, default {default}:", Hint("x"), default)
        show(f"__len__ TypeError, default {default}:", LenRaisesTypeError(), default)
        show(f"hint TypeError, default {default}:", HintRaises(TypeError("t")), default)
        show(f"hint KeyError, default {default}:", HintRaises(KeyError("k")), default)
    show("str default:", [], "x")
    show("float default:", [], 1.5)
    show("bool default:", NoHint(), True)
    show("no default:", NoHint())
    show("bool hint:", Hint(True), -1)
    with multiprocessing.Pool(1) as pool:
        print("in a child:", pool.apply(hints, ([-1, 0, 7],)))
