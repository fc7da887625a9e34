"""How a worker imports TensorFlow: the graph runtime at once, the public API only if asked.

``import tensorflow`` runs ``tensorflow/__init__.py``, which builds the whole public API (about
2,400 modules) and, through Keras, imports scikit-learn, SciPy and h5py when they are installed
(e.g. beside sentence-transformers). A worker needs none of it: :class:`~.graph.GraphRunner` uses
only the C++ runtime and the session, through ``tensorflow.core`` and ``tensorflow.python``
modules, which import without the package's ``__init__``. Measured on this project's machine
(TensorFlow 2.21, bench extra installed): RSS after the import 585 MiB with the public API,
352 MiB without, and 0.8 s instead of 3 s.

:func:`defer_public_api` puts a stand-in for the ``tensorflow`` package into ``sys.modules``. It
carries the package's path, so submodules import as usual; the first attribute anyone reads from
it (``tf.Graph``, ``tf.__version__``) runs the real ``__init__`` into the same module object, so
code that needs the public API still gets all of it, only later.
"""

from __future__ import annotations

import importlib.util
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
        with _lock:
            if isinstance(self, _DeferredPackage):  # another thread may have loaded it meanwhile
                self.__class__ = types.ModuleType
                self.__spec__.loader.exec_module(self)
        return getattr(self, name)


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
        return True
