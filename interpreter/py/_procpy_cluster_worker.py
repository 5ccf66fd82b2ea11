"""`procpy worker`: the cluster worker supervisor (a stub until branch h/worker lands)."""


def main(argv):
    raise SystemExit('procpy worker: not built yet')
