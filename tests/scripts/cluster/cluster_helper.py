"""A module imported from the scripts' own directory: on a cluster it travels with the job
(workers have no copy of it)."""


def shout(word):
    return word.upper() + '!'


class Box:
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return 'Box(%r)' % (self.value,)

    def __eq__(self, other):
        return isinstance(other, Box) and other.value == self.value


def boxed(x):
    return Box(x * 2)
