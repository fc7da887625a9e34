"""The service pipeline: client -> ventilator -> worker(s) -> sink -> client.

Modules, one role each (floors from the top; `.importlinter` keeps them so):
    remote         bert-serving-worker: a worker on another machine
    ventilator     receives requests, queues them, hands batches to workers
    worker         encodes batches with the engine: featurize and model threads, the watchdog
    sink           reassembles results in order and fails requests past their deadline
    scheduler      the request queue plus what each worker holds (credit, marks, deliveries, losses), and
                   the batches for them; free of sockets
    link           a worker's DEALER to the ventilator: registration, heartbeats, batches in, DONE out
    registry       the ventilator's table of workers: credit, heartbeats, losses
    supervisor     starts the roles' processes and restarts a worker that died
    statistics     the SHOW_STATUS counters of 1.10, and the workers lost by reason
    request_metrics  the sink's histograms: each request's time (total, queued, model, sink) by door
                   and outcome, the rows and padding of each model call
    peers          who sent a message, and whether its TERMINATE is obeyed
    publisher      the sink's XPUB: whole-identity topics per Curve key, bounded backlogs of replies
    request_queue  the requests taken and their pieces: admission, priority, turns; free of sockets
    histogram      a fixed-bucket histogram (counts and a sum), and the server's bucket sets
    messages       every internal message, packed and unpacked into named fields
Processes are started by ``..launcher``.
"""
__all__ = []
