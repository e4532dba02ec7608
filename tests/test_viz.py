"""The tree's pictures: the HTML page (structure checked from the paths themselves, then
rendered in a real headless Chromium), the entropy plot and the CLI's --html / --plot."""
import os
import re

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("transformers")

from eager_kernels import EagerConfig, generate, viz  # noqa: E402

from browser import NEEDS_CHROMIUM, dump_dom, parse, screenshot, splits_from_paths, tree_nodes  # noqa: E402
from conftest import make_tiny_llama  # noqa: E402

PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 20, 21], [1, 30, 31, 32]]


@pytest.fixture(scope="module")
def result():
    torch.set_num_threads(1)
    model = make_tiny_llama(160, 3, head_scale=25.0, silence_eos=True)
    out = generate(model, PROMPTS, EagerConfig.paper(max_new_tokens=12, max_paths_per_prompt=4, backend="torch"))
    assert out.metrics.branch_events > 0
    return out


def test_view_data_matches_the_paths(result):
    data = viz.view_data(result, title="tiny")
    assert data["title"] == "tiny" and "policy paper" in data["config"] and data["ramp"][0] == [255, 255, 204]
    assert len(data["prompts"]) == len(PROMPTS)
    for r, pr in zip(result.results, data["prompts"]):
        assert len(pr["paths"]) == len(r.paths) and r.paths[pr["answer"]] is r.answer
        for p, q in zip(r.paths, pr["paths"]):
            n = p.num_tokens
            assert q["token_ids"] == p.token_ids and len(q["tokens"]) == n
            assert all(len(q[k]) == n for k in ("entropies", "thresholds", "token_logprobs"))
            assert q["branch_steps"] == p.branch_steps and q["finished"] == p.finished
            assert q["score"] == p.score  # the path's own float, copied: no arithmetic
        assert all(t.startswith("[") for q in pr["paths"] for t in q["tokens"])  # no tokenizer: ids


def test_page_is_self_contained_and_escapes(result, tmp_path):
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return "".join("</script><b>" if i % 2 else f" w{i}\n" for i in ids)

    doc = viz.to_html(result, tmp_path / "tree.html", tokenizer=Tok(), prompts=["a <b>", "c", "d"])
    assert (tmp_path / "tree.html").read_text(encoding="utf-8") == doc
    assert doc.count("</script>") == 1  # the data cannot close the script element
    assert "renderEager(" in doc and "\\\\u23ce" in doc  # the data as JSON: newlines shown as ⏎
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(""", doc)  # nothing fetched from anywhere


def test_plot_writes_an_image(result, tmp_path):
    pytest.importorskip("matplotlib")
    out = result.plot(tmp_path / "entropy.png")
    assert (tmp_path / "entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out == tmp_path / "entropy.png"


def test_cli_generate_html_and_plot(result, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import eager_kernels.__main__ as cli

    model = make_tiny_llama(160, 3, head_scale=25.0, silence_eos=True)

    class Tok:
        chat_template = None
        eos_token_id = 3

        def encode(self, text, add_special_tokens=False):
            return [5 + (ord(c) % 100) for c in text][:6]

        def __call__(self, text):
            return {"input_ids": [1] + self.encode(text)}

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    monkeypatch.setattr(cli, "_load", lambda model_dir, batch_invariant=False: (model, Tok(), "tiny (test)", 0.0))
    page, image = tmp_path / "t.html", tmp_path / "t.png"
    assert cli.main(["generate", "hello", "--policy", "paper", "--max-new-tokens", "6", "--max-paths", "3",
                     "--backend", "torch", "--engine", "transformers", "--html", str(page), "--plot", str(image)]) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    doc = page.read_text(encoding="utf-8")
    assert "renderEager(" in doc and "tiny (test)" in doc and image.stat().st_size > 1000


@NEEDS_CHROMIUM
def test_page_renders_in_chromium(result, tmp_path):
    """The page in a real browser: the DOM after the renderer ran has every path, one mark
    per split, one token per tree node with its hover text, and opening it as #path=N
    lights exactly path N's tokens."""
    page = tmp_path / "tree.html"
    result.to_html(page)
    first = result.results[0]
    target = next(i for i, p in enumerate(first.paths) if p.branch_steps)
    els = parse(dump_dom(f"{page.as_uri()}#path={target}"))
    assert len(els["leaf"]) == sum(len(r.paths) for r in result.results)
    assert len(els["answer"]) == len(result.results)  # one starred answer per prompt
    assert len(els["fork"]) == sum(splits_from_paths(r.paths) for r in result.results)
    assert len(els["tok"]) == sum(tree_nodes(r.paths) for r in result.results)
    for tok in els["tok"]:
        assert tok["title"].startswith("entropy ") and "threshold" in tok["title"] and "step" in tok["title"]
    for fork in els["fork"]:
        assert "children:" in fork["title"] and " p " in fork["title"]
    assert len(els.get("hot", [])) >= 1  # the branch tokens sat above the threshold
    # the colour scale runs from the ramp's first colour (0 nats) to its last (the maximum)
    gradient = els["bar"][0]["style"].replace(" ", "")
    first, last = ("rgb(%d,%d,%d)" % tuple(c) for c in (viz.RAMP[0], viz.RAMP[-1]))
    assert gradient.startswith(f"background:linear-gradient(90deg,{first},") and gradient.endswith(f",{last});")
    # lit: path `target`'s tokens in every prompt that has such a path
    expected = sum(r.paths[target].num_tokens for r in result.results if target < len(r.paths))
    assert len(els.get("on", [])) == expected
    screenshot(page.as_uri(), tmp_path / "tree.png")


@NEEDS_CHROMIUM
def test_page_shows_hostile_text_as_text(result, tmp_path):
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return "".join("</script><b>x</b>" if i % 2 else f" w{i}" for i in ids)

    page = tmp_path / "tree.html"
    viz.to_html(result, page, tokenizer=Tok(), prompts=["<i>p</i>", "c", "d"])
    dom = dump_dom(page.as_uri())
    els = parse(dom)
    assert len(els["leaf"]) == sum(len(r.paths) for r in result.results)  # the page still renders
    assert "&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in dom and "&lt;i&gt;p&lt;/i&gt;" in dom
