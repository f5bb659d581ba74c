"""What L{cyme.client} hands back: records read from the API, and listings.

A record is a snapshot of the JSON a branch answered: its fields read as
attributes (C{instance.state}) or from C{info}; C{refresh()} reads it
again.  A section (an app's queues or instances) lists, gets, adds and
deletes the records of one collection, as the original Cyme's client did.
"""


class Record:
    """A record of the API; C{info} is its JSON as the branch answered it."""

    def __init__(self, info):
        self.info = dict(info)

    def __getattr__(self, name):
        # Only called for what the class does not define: the JSON's fields.
        info = self.__dict__.get("info", {})
        if name in info:
            return info[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __eq__(self, other):
        return type(other) is type(self) and other.info == self.info

    __hash__ = None

    def __repr__(self):
        return f"<{type(self).__name__}: {self.info.get('name')!r}>"


class Section:
    """
    One collection of an app: C{names()} from the API's listing, C{all()}
    the records (one request each), C{get(name)}; iterating yields records
    and C{section[name]} gets one, as in the original client.
    """

    def names(self):
        raise NotImplementedError

    # The original client's name for names().
    def all_names(self):
        return self.names()

    def get(self, name):
        raise NotImplementedError

    def all(self):
        return [self.get(name) for name in self.names()]

    def __iter__(self):
        return iter(self.all())

    def __getitem__(self, name):
        return self.get(name)

    def __delitem__(self, name):
        self.delete(name)

    def __contains__(self, name):
        return name_of(name) in self.names()


def name_of(value):
    """A name, or the name of a record given in its place."""
    return value.info.get("name") if isinstance(value, Record) else value


def bang(nowait):
    """The segments of the original Cyme's no-wait marker: C{("!",)} or none."""
    return ("!",) if nowait else ()
