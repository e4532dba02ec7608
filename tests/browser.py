"""Headless Chromium for the tests of the tree view (tests/test_viz.py) and the server's
page (tests/test_serve.py): the DOM of a page after its scripts ran, a screenshot, and the
elements of a DOM by class."""
import html.parser
import shutil
import subprocess

import pytest


def _ids(p) -> list:
    return p["token_ids"] if isinstance(p, dict) else p.token_ids


def splits_from_paths(paths) -> int:
    """Branch points counted without the page's trie: prefixes followed by several distinct
    tokens (paths as Path objects or as the API's dicts)."""
    nexts = {}
    for p in paths:
        ids = _ids(p)
        for t in range(len(ids)):
            nexts.setdefault(tuple(ids[:t]), set()).add(ids[t])
    return sum(1 for s in nexts.values() if len(s) > 1)


def tree_nodes(paths) -> int:
    """Tokens the tree draws: one per distinct prefix."""
    return len({tuple(_ids(p)[: t + 1]) for p in paths for t in range(len(_ids(p)))})


class _Collect(html.parser.HTMLParser):
    """Elements by class, with their attributes, from a page or a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.by_class = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for c in (a.get("class") or "").split():
            self.by_class.setdefault(c, []).append(a)


def parse(doc: str) -> dict:
    p = _Collect()
    p.feed(doc)
    return p.by_class


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(url: str, budget_ms: int = 2000) -> str:
    """The DOM of `url` once its scripts ran (virtual time stands still while a fetch is
    pending, so a page that calls an API is dumped after the answer is drawn)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def screenshot(url: str, png, size="1100,800", budget_ms: int = 3000) -> None:
    """A PNG of the page at `url` by headless Chromium."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--virtual-time-budget={budget_ms}", f"--window-size={size}", f"--screenshot={png}", url]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and open(png, "rb").read(4) == b"\x89PNG", run.stderr[-2000:]


NEEDS_CHROMIUM = pytest.mark.skipif(chromium() is None,
                                    reason="no headless Chromium (Debian: apt-get install -y chromium; make browser)")
