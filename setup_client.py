"""Build the ``bert-serving-client`` distribution (import name ``bert_serving.client``).

The client and the server are built from the same top directory, so each setup file keeps its
egg-info and build tree under its own folder of ``build/``; otherwise the two wheels would pick up
each other's files. Build with::

    python setup_client.py bdist_wheel -d dist
"""

import os
import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = 'bert_serving_client'
BUILD_ROOT = 'build/client'


def read_version() -> str:
    """Return ``__version__`` from the client's ``_version.py`` without importing the package."""
    text = (HERE / SOURCE_ROOT / 'bert_serving' / 'client' / '_version.py').read_text(encoding='utf-8')
    match = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f'no __version__ line found in {SOURCE_ROOT}/bert_serving/client/_version.py')
    return match.group(1)


# setuptools resolves package_dir and egg_base relative to the working directory.
os.chdir(HERE)
os.makedirs(BUILD_ROOT, exist_ok=True)

setup(
    name='bert-serving-client',
    version=read_version(),
    description='Map variable-length sentences to fixed-length vectors with a bert-serving server (client)',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='MIT',
    license_files=['LICENSE'],
    python_requires='>=3.9',
    package_dir={'': SOURCE_ROOT},
    # bert_serving is a PEP 420 namespace shared with the server: ship only the client subtree.
    packages=find_namespace_packages(where=SOURCE_ROOT, include=['bert_serving.client', 'bert_serving.client.*']),
    install_requires=['pyzmq', 'numpy'],
    entry_points={
        'console_scripts': [
            'bert-serving-encode = bert_serving.client.encode_cli:main',
        ],
    },
    zip_safe=False,
    options={
        'egg_info': {'egg_base': BUILD_ROOT},
        'build': {'build_base': BUILD_ROOT},
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        # `make test-client-pythons` runs the client's tests on each of these.
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Programming Language :: Python :: 3.13',
        'Intended Audience :: Developers',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    keywords='bert nlp zeromq sentence-encoding client',
)
