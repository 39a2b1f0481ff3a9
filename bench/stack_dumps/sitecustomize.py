"""Put first on PYTHONPATH by `bench/hang_stacks.py`, so that every Python process of a benchmark loads it at start-up,
vLLM's engine-core process included (spawned, it sees the same PYTHONPATH): SIGUSR1 then makes the process write
every thread's stack to its stderr, and the process records its pid so that only such processes are signalled.
A hung step then shows where each of its processes waits, not just that the frontend waits for the engine."""

import os

_folder = os.environ.get("RSAMPLE_STACKS_PIDS")
if _folder:
    try:
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
        open(os.path.join(_folder, str(os.getpid())), "w").close()
    except Exception:  # a diagnostic aid must never stop the process it rides in
        pass
