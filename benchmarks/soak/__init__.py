"""``make soak``: mixed traffic and chaos against a real server; nothing may be lost or wrong.

    PYTHONPATH=bert_serving_server:bert_serving_client .venv/bin/python -m benchmarks.soak \\
        [--seconds 600] [--chaos kill,stop,malformed,drop,flood] [--output FILE.json]

One module per part of the run:

    server     bert-serving-start in a subprocess, its flags, its process tree and their RSS
    oracle     the sentence pool and its vectors, computed in this process beforehand
    traffic    the client loops: BertClient, ConcurrentBertClient, async, 5,000 rows, HTTP, NONE pooling
    compat110  the unmodified PyPI 1.10.0 client in a subprocess
    chaos      kill -9 and SIGSTOP of workers, malformed frames, dropped clients, queue floods
    ledger     every request's outcome (correct, wrong, failed with a reason, lost) and the summary
    run        the orchestration, the verdict and the hard deadline

docs/reliability.md says how to read the summary.
"""

__all__ = []
