"""Files replaced atomically: written aside, flushed to disk, then renamed over the old one, so a
crash mid-write leaves the previous version and a reader never sees half a file (stdlib only)."""

import json
import os


def write_text_atomic(path, text):
    """Writes text through a temporary file and a rename: a crash never leaves half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_json_atomic(path, payload):
    """Writes JSON (indented, keys sorted) atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))
