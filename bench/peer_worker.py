"""A peer's worker process for bench/run.py (started and killed by it).

    peer_worker.py huey <ready-file>                      4 worker threads, consumer defaults
    peer_worker.py rq-simple|rq-fork <queue> <db> <ready-file>   one RQ worker (run 4 of them)

The environment carries UPQ_BENCH_* (see bench_tasks.py). The ready file is written
right before the worker enters its loop.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    kind = sys.argv[1]
    if kind == "huey":
        import bench_tasks
        assert bench_tasks.huey is not None, "UPQ_BENCH_HUEY is not set"
        # documented defaults (periodic=True, initial_delay=0.1, backoff=1.15, max_delay=10)
        # except the worker count and type the benchmark asks for
        consumer = bench_tasks.huey.create_consumer(workers=4, worker_type="thread")
        Path(sys.argv[2]).write_text("ready")
        consumer.run()
    elif kind in ("rq-simple", "rq-fork"):
        from redis import Redis
        from rq import Queue, SimpleWorker, Worker
        import bench_tasks  # noqa: F401 - imported once here; the forking worker's children inherit it
        conn = Redis(host="127.0.0.1", port=6379, db=int(sys.argv[3]))
        cls = SimpleWorker if kind == "rq-simple" else Worker
        worker = cls([Queue(sys.argv[2], connection=conn)], connection=conn)
        Path(sys.argv[4]).write_text("ready")
        worker.work()          # defaults (logging at INFO to stderr, which the bench sends to a file)
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")


if __name__ == "__main__":
    main()
