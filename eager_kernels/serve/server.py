"""The HTTP server of `eager-kernels serve`: uvicorn's, with a drain before the exit
(needs the `serve` extra; serve/cli.py imports this module after checking for it)."""
from __future__ import annotations

import threading
import time

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the exit: the first SIGTERM / SIGINT makes new
    requests get 503 (the socket stays open so that they get an answer), waits for the
    requests in flight (at most drain_timeout s), then lets uvicorn shut down; a second
    signal exits at once. state: what the app's endpoints share with it (app.State:
    draining, in_flight, lock)."""

    def __init__(self, config, state, drain_timeout: float):
        super().__init__(config)
        self.state, self.drain_timeout = state, drain_timeout

    def handle_exit(self, sig, frame):
        if self.state.draining:
            self.should_exit = self.force_exit = True
            return
        self.state.draining = True
        threading.Thread(target=self._drain, name="eager-serve-drain", daemon=True).start()

    def _drain(self):
        end = time.monotonic() + self.drain_timeout
        while time.monotonic() < end:
            with self.state.lock:
                if self.state.in_flight == 0:
                    break
            time.sleep(0.05)
        self.should_exit = True
