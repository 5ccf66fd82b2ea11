# A long-lived process that receives cyclic data keeps it forever under procpy (RustPython 0.5):
# its automatic collector only collects generation 0. Each message below is a list that holds
# itself and 2000 empty lists; decoding it makes 2000 tracked objects, so an automatic
# collection runs while the list is half built, moves it to generation 1, and nothing collects
# generation 1 afterwards. CPython prints about the same count twice; procpy's grows by ~2000
# objects per message until gc.collect().
import gc
import multiprocessing as mp
import sys


def child(conn, n):
    conn.recv()
    before = len(gc.get_objects())
    for _ in range(n):
        conn.recv()
    after = len(gc.get_objects())
    gc.collect()
    conn.send((before, after, len(gc.get_objects())))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    msg = [[] for _ in range(2000)]
    msg.insert(0, msg)
    a, b = mp.Pipe()
    p = mp.Process(target=child, args=(b, n))
    p.start()
    for _ in range(n + 1):
        a.send(msg)
    before, after, collected = a.recv()
    p.join()
    print(f"tracked objects in the receiver: {before} before {n} messages, {after} after, {collected} after gc.collect()")
