"""Start-up of the bin/ scripts, before anything imports a dependency (stdlib only).

`bin/train` & co. run as `bin/train ...` from any shell: when the interpreter that started them
lacks the project's dependencies (a system python3 without absl-py or TensorFlow) and the clone
has its `.venv` (made by `make train`/`make test`), the script re-executes itself under
`.venv/bin/python`, so the README's commands need no activated environment.
"""

import importlib.util
import os
import sys

REQUIRED = ("absl", "tensorflow")


def use_project_python(script):
    """Re-executes `script` under <clone>/.venv/bin/python if this Python lacks REQUIRED.

    Exits with a one-line error when neither this Python nor the clone's .venv can run it.
    """
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    root = os.path.dirname(os.path.dirname(os.path.realpath(script)))
    venv = os.path.join(root, ".venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(python, [python, os.path.realpath(script), *sys.argv[1:]])
    sys.exit(
        f"error: {sys.executable} cannot import {', '.join(missing)}; run `make install` "
        f"in {root} (creates .venv, which bin/* then use), or activate an environment "
        "where the package is installed (pip install -e '.[cpu]')"
    )
