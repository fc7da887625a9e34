"""Release and wire-protocol versions, shared by the client and the server.

The setup files read ``__version__`` from this file with a regular expression, so keep both
assignments on one line each and free of computation.
"""

__version__ = '2.0.0'

# Bumped only when a message layout changes in a way a 1.10-era peer could not read.
PROTOCOL_VERSION = 1

# The bert-as-service release whose wire protocol we speak. The server reports it as
# ``server_version``, because a 1.10 client refuses any other value; ``server_release`` is ours.
WIRE_RELEASE = '1.10.0'
