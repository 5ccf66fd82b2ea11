import sys, gc, warnings, multiprocessing as mp
if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    warnings.simplefilter('always')
    p = mp.Pool(1)
    p.map(abs, [1])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        del p
        gc.collect()
        print([str(x.message) for x in w], [x.category.__name__ for x in w])
