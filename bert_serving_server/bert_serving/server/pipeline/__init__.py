"""The service pipeline: client -> ventilator -> worker(s) -> sink -> client.

Modules, one role each:
    messages    every internal message, packed and unpacked into named fields
    launcher    runs a role (sink, worker, HTTP proxy) as its own command
    ventilator  receives requests, queues them, hands batches to workers
    worker      encodes batches with the engine
    sink        reassembles results in order and fails requests past their deadline
    publisher   the sink's XPUB: whole-identity topics per Curve key, bounded backlogs of replies
    statistics  the SHOW_STATUS counters
"""
__all__ = []
