"""report.html: built from a real (tiny) experiment's records, checked in a headless Chromium where one exists."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmrl import collection
from vlmrl.configs import CollectArguments, EvaluateArguments, ReflectArguments
from vlmrl.evaluation import evaluate
from vlmrl.reflection import reflect
from vlmrl.report import TABLE_HEADER, summarize, table_rows
from vlmrl.report_page import outcome_step, pick_reflections

ROOT = Path(__file__).resolve().parent.parent
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """entry 0 and iteration 1 of an experiment played by the random policy, reflected on by the oracle."""
    exp = tmp_path_factory.mktemp("experiments") / "look"
    quick = dict(policy="random", max_steps=40, num_envs=2, progress=False, report_to="none")
    evaluate(EvaluateArguments(episodes=2, output_dir=str(exp / "iteration_0"), **quick))
    it = exp / "iteration_1"
    collection.collect(CollectArguments(episodes=2, output_dir=str(it / "episodes"), iteration=1, **quick))
    reflect(ReflectArguments(episodes=str(it / "episodes"), reflector="oracle", reflect_on="all",
                             reflection_rate=1.0, output_dir=str(it / "reflections"), progress=False))
    evaluate(EvaluateArguments(episodes=2, output_dir=str(it), seed=1, video_episodes="all", **quick))
    recipe = ROOT / "recipes" / "tiny-smolvlm" / "pong"
    summarize(exp, recipe)
    return exp


class _Tables(HTMLParser):
    """The cells of every table, by table id; and every img's src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._table is not None:
            self._table[-1].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None


def test_report_page_holds_the_summary_and_inlines_every_image(experiment):
    summary = json.loads((experiment / "experiment_summary.json").read_text())
    page = _Tables()
    page.feed((experiment / "report.html").read_text())
    assert page.tables["summary"] == [list(TABLE_HEADER), *table_rows(summary)]
    for entry, row in zip(summary["iterations"], page.tables["summary"][1:], strict=True):
        assert row[0] == str(entry["iteration"]) and f"{entry['eval']['mean_return']:+.2f}" in row[6]
    # Self-contained: every image inlined; the curve, a video per entry, and 3 pictures per reflection card.
    assert all(src.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for src in page.images)
    gifs = [src for src in page.images if src.startswith("data:image/gif")]
    assert len(gifs) == 2 and len(page.images) == 1 + 2 + 3 * 6
    assert 'href="iteration_1/episode_001.gif"' in (experiment / "report.html").read_text()  # the rest: linked


def test_outcome_and_picks():
    rewards = {s: 0.0 for s in range(100)}
    rewards[30] = -1.0
    assert outcome_step(rewards, 10) == (31, "point lost 21 steps later")
    assert outcome_step(rewards, 40) == (41, "next frame") and outcome_step(rewards, 99) == (99, "next frame")
    rows = [{"correct_action": "NOOP", "action_taken": a, "source_episode_id": 0, "source_step": i}
            for i, a in enumerate(["NOOP", "LEFT"] * 10)]
    picked = pick_reflections(rows, 3)
    assert len(picked) == 3 and all(r["action_taken"] == "LEFT" for r in picked)


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine")
def test_report_page_renders_in_a_browser(experiment, tmp_path):
    url = (experiment / "report.html").resolve().as_uri()
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-ok="(\d+)" data-images-broken="(\d+)"', dom)
    assert loaded and int(loaded.group(1)) == 1 + 2 + 3 * 6 and loaded.group(2) == "0", dom[:300]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1280,2200", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2200, 1280)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # drawn: text, plot, frames; not a blank page
