"""``python -m benchmarks.soak``: see ``benchmarks/soak/__init__.py`` and docs/reliability.md."""
import os
import sys

# Before TensorFlow loads (the oracle, and the servers, which inherit it): no C++ start-up chatter.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from .run import main  # noqa: E402

sys.exit(main())
