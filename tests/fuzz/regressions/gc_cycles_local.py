# The same without any messaging: a cycle alive while an automatic collection runs moves to
# generation 1, which procpy (RustPython 0.5) never collects by itself. CPython's count stays
# flat; procpy's grows by one object per step until gc.collect().
import gc


def step():
    a = [0]
    a.append(a)                          # a reference cycle
    junk = [[] for _ in range(2500)]     # enough new objects for an automatic collection while `a` lives


for n in range(3001):
    step()
    if n % 1000 == 0:
        print(n, "tracked objects:", len(gc.get_objects()), "counts:", gc.get_count())
gc.collect()
print("after gc.collect():", len(gc.get_objects()))
