"""Start-up of the bin/ scripts, before anything imports a dependency (stdlib only).

`bin/train` & co. run as `bin/train ...` from any shell: when the interpreter that started them
lacks the project's dependencies (a system python3 without absl-py or TensorFlow) and the clone
has its `.venv` (made by `make train`/`make test`), the script re-executes itself under
`.venv/bin/python`, so the README's commands need no activated environment.

TensorFlow's native libraries write start-up notices straight to file descriptor 2 while they
load ("All log messages before absl::InitializeLog() is called are written to STDERR", and with
oneDNN on, the default on CPUs with AVX512_VNNI/BF16, "oneDNN custom operations are on ..."), once
per library, before TF_CPP_MIN_LOG_LEVEL takes effect. The scripts keep them off the terminal: the
first `import tensorflow` runs with descriptor 2 set aside, and what it wrote is shown only if the
import fails. TF_CPP_MIN_LOG_LEVEL=0 or 1 (TensorFlow's own variable) shows everything again.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile

REQUIRED = ("absl", "tensorflow")


def start(script):
    """What every bin/ script does first: TensorFlow's C++ logging at warnings and above (unless
    TF_CPP_MIN_LOG_LEVEL is set), the clone's Python (use_project_python), and TensorFlow's
    start-up notices kept off the terminal unless TF_CPP_MIN_LOG_LEVEL asks for INFO."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    use_project_python(script)
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() not in ("0", "1"):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds the top-level `tensorflow` package once and loads it through _QuietLoader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import; everything after it is TensorFlow's business
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """Delegates to the real loader; exec_module runs with file descriptor 2 sent to a
    temporary file, replayed to stderr if the import raises."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                self._loader.exec_module(module)
            except BaseException:
                sys.stderr.flush()
                os.dup2(saved, 2)
                sink.seek(0)
                os.write(2, sink.read())
                raise
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)


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
