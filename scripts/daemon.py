"""Starting highserve for the benchmark scripts (imported, not run)."""

import subprocess
import sys
import time


def start(exe, args, run, timeout=60):
    """Starts `exe serve --port 0 --run-dir run *args`, its output in
    run/daemon.log, and waits for the `ready` file the daemon writes there.
    Returns (the process, its HTTP URL); exits naming the log if it does not
    get ready within `timeout` seconds."""
    log = open(run / "daemon.log", "w")
    daemon = subprocess.Popen([exe, "serve", "--port", "0", "--run-dir", run, *args], stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while not (run / "ready").exists() and daemon.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not (run / "ready").exists():
        daemon.kill()
        sys.exit(f"{exe} did not get ready; see {run / 'daemon.log'}")
    return daemon, (run / "ready").read_text().strip()
