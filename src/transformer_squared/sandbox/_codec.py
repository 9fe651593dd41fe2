"""The sandbox children's wire format: plain values by value, anything else as a handle.

Loaded by path by ``_child.py`` (both roles, standard library only). ``encode``/``decode`` turn
exact builtin value types (and Fraction/Decimal, the standard library's dict subclasses, deque)
into JSON-able data and back, everything else into a handle ``{"r": n}``; ``send``/``receive``
frame one message on a pipe; ``read_job`` reads the parent's length-prefixed job.
"""

MAX_MESSAGE = 16 << 20  # bytes of one serialised message
MAX_DEPTH = 100


# ------------------------------------------------------------------ codec (plain values only)


def encode(value, refs, depth=0):
    """A JSON-able form of ``value``: exact builtin value types (and Fraction/Decimal) by value,
    anything else (subclasses included) as a handle ``{"r": n}`` into ``refs``."""
    from decimal import Decimal
    from fractions import Fraction

    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -(1 << 53) < value < (1 << 53) else {"i": hex(value)}
    if kind is float:
        return {"f": value.hex()}
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if kind in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "s", frozenset: "z"}[kind]
        return {tag: [encode(x, refs, depth + 1) for x in value]}
    if kind is dict or kind in _dict_kinds():
        tag = "d" if kind is dict else _dict_kinds()[kind]
        return {tag: [[encode(k, refs, depth + 1), encode(v, refs, depth + 1)] for k, v in value.items()]}
    if kind is _deque():
        return {"dq": [encode(x, refs, depth + 1) for x in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if kind is Fraction:
        return {"q": [hex(value.numerator), hex(value.denominator)]}
    if kind is Decimal:
        return {"D": str(value)}
    refs.append(value)
    return {"r": len(refs) - 1}


def _dict_kinds():
    """The standard library's dict subclasses, sent by value under their own tag (their equality
    is the standard library's; a subclass the program defines is a handle like any object)."""
    import collections

    return {collections.Counter: "C", collections.OrderedDict: "O", collections.defaultdict: "dd"}


def _deque():
    import collections

    return collections.deque


def decode(data, handle, depth=0):
    """The value :func:`encode` described; ``handle(n)`` makes what stands for handle ``n``."""
    from decimal import Decimal
    from fractions import Fraction

    if data is None or type(data) in (bool, str, int):
        return data
    if type(data) is not dict or len(data) != 1 or depth > MAX_DEPTH + 1:
        raise ValueError("malformed value")
    ((tag, inner),) = data.items()
    if tag == "i":
        return int(inner, 16)
    if tag == "f":
        return float.fromhex(inner)
    if tag in ("l", "t", "s", "z"):
        items = [decode(x, handle, depth + 1) for x in inner]
        return {"l": list, "t": tuple, "s": set, "z": frozenset}[tag](items)
    if tag in ("d", "C", "O", "dd"):
        pairs = {decode(k, handle, depth + 1): decode(v, handle, depth + 1) for k, v in inner}
        if tag == "d":
            return pairs
        kind = {v: k for k, v in _dict_kinds().items()}[tag]
        return kind(None, pairs) if tag == "dd" else kind(pairs)
    if tag == "dq":
        return _deque()(decode(x, handle, depth + 1) for x in inner)
    if tag == "b":
        return bytes.fromhex(inner)
    if tag == "c":
        return complex(float.fromhex(inner[0]), float.fromhex(inner[1]))
    if tag == "q":
        return Fraction(int(inner[0], 16), int(inner[1], 16))
    if tag == "D":
        return Decimal(inner)
    if tag == "r" and type(inner) is int:
        return handle(inner)
    raise ValueError("malformed value")


def send(write, fd, message):
    import json

    blob = json.dumps(message).encode()
    if len(blob) > MAX_MESSAGE:
        blob = json.dumps({"exc": ["MemoryError", "the value is too large to return from the sandbox"]}).encode()
    blob = len(blob).to_bytes(8, "little") + blob
    view = memoryview(blob)
    while view:
        view = view[write(fd, view) :]


def receive(read, fd):
    """One message, or None at end of stream (the other side is gone)."""
    import json

    def exact(count):
        chunks, got = [], 0
        while got < count:
            chunk = read(fd, min(1 << 20, count - got))
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    head = exact(8)
    if head is None:
        return None
    size = int.from_bytes(head, "little")
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    blob = exact(size)
    return None if blob is None else json.loads(blob)


def read_job(read, fd):
    import json

    header = b""
    while not header.endswith(b"\n"):
        byte = read(fd, 1)
        if not byte or len(header) > 20:
            raise EOFError("bad payload header")
        header += byte
    size, chunks = int(header), []
    while size:
        chunk = read(fd, min(1 << 16, size))
        if not chunk:
            raise EOFError("payload truncated")
        chunks.append(chunk)
        size -= len(chunk)
    return json.loads(b"".join(chunks))
