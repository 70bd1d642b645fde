"""The one JSON `default` for memtrain's records: NumPy scalars as Python numbers,
anything else as its str()."""


def plain(v):
    """json.dumps default: NumPy scalars as Python numbers, anything else as its str()."""
    if hasattr(v, "item"):
        return v.item()
    return str(v)
