"""Which sources the extension was built from.

setup.py hashes csrc/ at build time and compiles the hash into lstm_fused._C; here the same hash is
taken again from the tree beside the package, so that a benchmark run or a test run against an
extension built from other sources (an edit not yet rebuilt, an experiment not yet reverted) says
so. Standard library only: setup.py loads this file by its path, before the package can import.
"""
import hashlib
import os


def source_hash(root: str) -> str:
    """The first 16 hex digits of a SHA-256 over the path and bytes of every file under root/csrc."""
    csrc = os.path.join(root, "csrc")
    paths = sorted(
        os.path.relpath(os.path.join(d, f), csrc).replace(os.sep, "/") for d, _, files in os.walk(csrc) for f in files
    )
    h = hashlib.sha256()
    for p in paths:
        with open(os.path.join(csrc, p), "rb") as f:
            h.update(p.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:16]


def build_matches_source():
    """True or False where the package sits in its source tree (an editable install); None for an
    install without csrc/ beside it."""
    from . import _C

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, "csrc")):
        return None
    return _C.source_hash() == source_hash(root)
