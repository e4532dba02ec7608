"""The JSONL result store: one line per completed (method, prompt), so that an interrupted
run resumes where it stopped.

Every record carries `key` = "<run hash>/<method label>/<prompt id>". The run hash covers
everything that changes the numbers (model, suite seed and size, the prompts' token ids, M,
max_new_tokens, temperature, q, seed, and the batch size unless the run is batch-invariant;
theta is part of the method label), so records of another configuration in the same file
are never reused; run_eval refuses to continue a default-mode run with another batch size
(Evaluator.batch_conflict). Records of one generate() call are written with a single
write() and flushed and fsynced before the next call starts; a torn last line (the process
killed mid-write) is ignored on load and recomputed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class ResultStore:
    def __init__(self, path):
        self.path = Path(path)
        self.records = {}  # key -> record
        self.skipped_lines = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                        key = rec["key"]
                    except (ValueError, KeyError, TypeError):
                        self.skipped_lines += 1
                        continue
                    self.records[key] = rec

    def __contains__(self, key) -> bool:
        return key in self.records

    def get(self, key):
        return self.records.get(key)

    def add(self, records) -> None:
        """Append records (one write, flushed and fsynced)."""
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A torn last line from an interrupted run must not swallow the first new record.
        prefix = ""
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    prefix = "\n"
        text = prefix + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[r["key"]] = r
