"""How a worker imports TensorFlow: the graph runtime at once, the public API only if asked.

``import tensorflow`` runs ``tensorflow/__init__.py``, which builds the whole public API (about
2,400 modules) and, through Keras, imports scikit-learn, SciPy and h5py when they are installed
(e.g. beside sentence-transformers). A worker needs none of it: :class:`~.runner.GraphRunner` uses
only the C++ runtime and the session, through ``tensorflow.core`` and ``tensorflow.python``
modules, which import without the package's ``__init__``. Measured on this project's machine
(TensorFlow 2.21, bench extra installed): RSS after the import 585 MiB with the public API,
352 MiB without, and 0.8 s instead of 3 s.

:func:`defer_public_api` puts a stand-in for the ``tensorflow`` package into ``sys.modules``. It
carries the package's path, so submodules import as usual; the first attribute anyone reads from
it (``tf.Graph``, ``tf.__version__``) runs the real ``__init__`` into the same module object, so
code that needs the public API still gets all of it, only later. So does an import of a part of
the generated API (``import tensorflow.compat.v1``).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
import types

__all__ = ['OPTIONAL_IMPORTS', 'defer_public_api']

# Modules that TensorFlow's public API imports inside try/except ImportError and that a worker
# never calls: Keras and, through it, scikit-learn and SciPy; the HDF5 bindings of TensorFlow's
# legacy Keras. Kept out even if the public API is loaded later: about 120 MiB and 1.4 s.
OPTIONAL_IMPORTS = ('keras', 'tf_keras', 'sklearn', 'scipy', 'h5py')

_lock = threading.RLock()


class _DeferredPackage(types.ModuleType):
    """The ``tensorflow`` package before its ``__init__`` ran. Only attributes the package does
    not have yet reach ``__getattr__``; the import system's own (``__path__``, ``__spec__``) are
    set, so importing submodules never triggers the load."""

    def __getattr__(self, name: str):
        _load(self)
        return getattr(self, name)


class _ApiImportHook(importlib.abc.MetaPathFinder):
    """Loads the public API before the import of a ``tensorflow.X`` that is not in the package's
    directory: the real ``__init__`` puts the generated API (``tensorflow.compat`` and the like)
    on the package's path, and ``import tensorflow.compat.v1`` must then find the same module as
    ``tf.compat.v1``."""

    def __init__(self, locations):
        # Names of the package directory's entries: subpackages, modules, extension modules.
        self.entries = set()
        for location in locations:
            try:
                self.entries.update(entry.split('.')[0] for entry in os.listdir(location))
            except OSError:
                continue

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split('.')
        package = sys.modules.get('tensorflow')
        if len(parts) > 1 and parts[0] == 'tensorflow' and parts[1] not in self.entries \
                and isinstance(package, _DeferredPackage):
            _load(package)
        return None  # the usual finders import it


def _load(package: types.ModuleType) -> None:
    """Runs the real ``__init__`` into the stand-in, once, and removes the import hook."""
    with _lock:
        if not isinstance(package, _DeferredPackage):  # another thread loaded it meanwhile
            return
        package.__class__ = types.ModuleType
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ApiImportHook)]
        package.__spec__.loader.exec_module(package)


def defer_public_api() -> bool:
    """Makes this process import TensorFlow's public API only when something reads from the
    ``tensorflow`` module, and never import :data:`OPTIONAL_IMPORTS` (importing one of them
    afterwards raises ImportError). For a process that runs only graphs: a worker.

    Returns:
        True if the stand-in is in place; False if TensorFlow was already imported, or is not
        installed, and nothing changed.
    """
    with _lock:
        if 'tensorflow' in sys.modules:
            return False
        spec = importlib.util.find_spec('tensorflow')
        if spec is None or spec.submodule_search_locations is None:
            return False
        for name in OPTIONAL_IMPORTS:
            sys.modules.setdefault(name, None)  # None: the import system's "cannot be imported"
        package = _DeferredPackage('tensorflow')
        package.__spec__ = spec
        package.__loader__ = spec.loader
        package.__file__ = spec.origin
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = 'tensorflow'
        sys.modules['tensorflow'] = package
        sys.meta_path.insert(0, _ApiImportHook(package.__path__))
        return True
