"""report.html: one page per experiment to look at, beside experiment_summary.json (``make report``).

The learning curves, the per-iteration table (the same cells ``make report`` prints), each iteration's
evaluation videos (action, score and the oracle's action drawn on them) and a gallery of reflections:
the frame, what the model saw, the frame where the outcome showed (the next point scored, else the
next frame), the action taken, the correction and the analysis. Self-contained: every image is
inlined as a data URI and no script or style comes from elsewhere, so the one file can be mailed,
attached to a run or opened offline. A small inline script counts the images that loaded
(``data-images-ok`` / ``data-images-broken`` on ``<html>``), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pyarrow.parquet as pq

from vlmrl.data import shard_dir
from vlmrl.experiment import iteration_dir

REPORT = "report.html"
REFLECTIONS_SHOWN = 6  # per iteration
OUTCOME_HORIZON = 60  # agent steps ahead searched for the point that decided the step's outcome

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #1d1d1f; padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; }
table { border-collapse: collapse; font-size: 14px; margin: 12px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f4f6; }
img.pixel { image-rendering: pixelated; }
.videos, .gallery { display: flex; flex-wrap: wrap; gap: 16px; }
.videos .iteration { width: 340px; } .videos .meta { font-size: 12px; }
figure { margin: 0; } figcaption { font-size: 13px; color: #444; max-width: 330px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px; width: 540px; font-size: 13px; }
.card .frames { display: flex; gap: 6px; align-items: flex-start; }
.card .frames figure { text-align: center; }
.taken { color: #b3261e; font-weight: 600; } .fixed { color: #1b7f3b; font-weight: 600; }
"""

_COUNT_IMAGES = """
window.addEventListener("load", () => {
  const images = [...document.images];
  const ok = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.documentElement.dataset.imagesOk = ok;
  document.documentElement.dataset.imagesBroken = images.length - ok;
});
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _img(data: bytes, mime: str, alt: str, width: int | None = None, pixel: bool = True) -> str:
    size = f' width="{width}"' if width else ""
    cls = ' class="pixel"' if pixel else ""
    return f'<img src="{_data_uri(data, mime)}" alt="{html.escape(alt)}"{size}{cls}>'


def _table(header: tuple[str, ...] | list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _videos(exp_dir: Path, entry: dict) -> str:
    """An iteration's evaluation video (results.json's ``video``, inlined) and links to the other filmed
    episodes' GIFs (each ~1 MB: inlining them all would make the page heavy)."""
    ev = entry["eval"]
    paths = [_find(exp_dir, entry["iteration"], p) for p in (ev.get("videos") or [ev.get("video")]) if p]
    paths = [p for p in paths if p is not None]
    if not paths:
        return "<p class='meta'>no video recorded</p>"
    first, rest = paths[0], paths[1:]
    episode_return = ev["returns"][_episode_index(first)] if _episode_index(first) is not None else None
    caption = first.name + ("" if episode_return is None else f": return {episode_return:+.0f}")
    out = (f"<figure>{_img(first.read_bytes(), 'image/gif', caption, width=320)}"
           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if rest:
        links = " ".join(f'<a href="{html.escape(p.relative_to(exp_dir).as_posix())}">{html.escape(p.stem)}</a>'
                         for p in rest if p.is_relative_to(exp_dir))
        out += f"<p class='meta'>the other episodes filmed: {links}</p>"
    return out


def _find(exp_dir: Path, k: int, path: str) -> Path | None:
    """A recorded video path, or the file of that name in the iteration's folder (a moved experiment)."""
    for candidate in (Path(path), iteration_dir(exp_dir, k) / Path(path).name):
        if candidate.exists():
            return candidate.resolve()
    return None


def _episode_index(gif: Path) -> int | None:
    stem = gif.stem.removeprefix("episode_")
    return int(stem) if stem.isdigit() else None


def pick_reflections(rows: list[dict], count: int = REFLECTIONS_SHOWN) -> list[dict]:
    """Reflections worth looking at: those that changed the action, spread evenly over the set (the first
    ones otherwise), in episode and step order."""
    changed = [r for r in rows if r["correct_action"] != r["action_taken"]] or rows
    changed.sort(key=lambda r: (r["source_episode_id"], r["source_step"]))
    if len(changed) <= count:
        return changed
    stride = len(changed) / count
    return [changed[int(i * stride)] for i in range(count)]


def _episode_frames(episodes_dir: Path, episode_id: int) -> dict[int, tuple[bytes, float]] | None:
    path = shard_dir(episodes_dir) / f"episode-{episode_id:06d}.parquet"
    if not path.exists():
        return None
    table = pq.read_table(path, columns=["step", "frame", "reward"]).to_pylist()
    return {row["step"]: (row["frame"]["bytes"], row["reward"]) for row in table}


def outcome_step(rewards: dict[int, float], step: int, horizon: int = OUTCOME_HORIZON) -> tuple[int, str]:
    """The step whose frame shows how ``step`` turned out: the frame after the next point scored within
    ``horizon`` steps, else the next frame; and a caption saying which."""
    last = max(rewards)
    for s in range(step, min(step + horizon, last) + 1):
        if rewards[s]:
            return min(s + 1, last), f"{'point won' if rewards[s] > 0 else 'point lost'} {s - step + 1} steps later"
    return min(step + 1, last), "next frame"


def _reflection_cards(exp_dir: Path, k: int) -> str:
    """The gallery of iteration k's reflections."""
    it = iteration_dir(exp_dir, k)
    files = sorted(shard_dir(it / "reflections").glob("*.parquet"))
    if not files:
        return "<p class='meta'>no reflections on disk</p>"
    columns = ["image", "analysis", "action_taken", "correct_action", "oracle_action", "reflector",
               "source_episode_id", "source_step", "return_to_go"]
    rows = []
    for f in files:
        names = pq.read_schema(f).names
        rows += pq.read_table(f, columns=[c for c in columns if c in names]).to_pylist()
    cards, episodes = [], {}
    for r in pick_reflections(rows):
        episode_id, step = r["source_episode_id"], r["source_step"]
        if episode_id not in episodes:
            episodes[episode_id] = _episode_frames(it / "episodes", episode_id)
        frames = episodes[episode_id]
        pictures = []
        if frames and step in frames:
            pictures.append(("the frame", frames[step][0], 160))
            after, caption = outcome_step({s: reward for s, (_, reward) in frames.items()}, step)
            pictures.append((f"outcome: {caption}", frames[after][0], 160))
        if r.get("image") and r["image"].get("bytes"):
            pictures.append(("what the model saw", r["image"]["bytes"], 128))
        figures = "".join(f"<figure>{_img(data, 'image/png', label, width=width)}<figcaption>{html.escape(label)}"
                          f"</figcaption></figure>" for label, data, width in pictures)
        oracle = r.get("oracle_action")
        cards.append(
            f"<div class='card'><div class='frames'>{figures}</div>"
            f"<p>episode {episode_id}, step {step} · return-to-go {r.get('return_to_go', 0):+.2f} · "
            f"reflector {html.escape(str(r.get('reflector', '?')))}</p>"
            f"<p>action taken <span class='taken'>{html.escape(r['action_taken'])}</span> → correction "
            f"<span class='fixed'>{html.escape(r['correct_action'])}</span>"
            + ("" if not oracle else f" (oracle: {html.escape(oracle)})") + "</p>"
            f"<p><i>{html.escape(r.get('analysis') or '')}</i></p></div>"
        )
    return f"<p class='meta'>{len(cards)} of {len(rows)} reflections (those that changed the action)</p>" \
           f"<div class='gallery'>{''.join(cards)}</div>"


def render_report_page(exp_dir: Path, summary: dict, references: dict[str, dict]) -> str:
    """The page's HTML."""
    from vlmrl.report import TABLE_HEADER, evaluated_entries, table_rows

    name = html.escape(summary["experiment"])
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>vlmrl: {name}</title>"
             f"<style>{_STYLE}</style><script>{_COUNT_IMAGES}</script></head><body>",
             f"<h1>vlmrl experiment <code>{name}</code></h1>",
             f"<p class='meta'>recipe {html.escape(str(summary.get('recipe')))} · seed {summary.get('seed', 0)} · "
             f"{len(summary['iterations'])} entries (0: the base model)</p>"]
    curve = exp_dir / "learning_curve.png"
    if curve.exists():
        parts.append("<h2>Learning curves</h2>" + _img(curve.read_bytes(), "image/png", "learning curves",
                                                        width=1100, pixel=False))
    parts.append("<h2>Per iteration</h2>" + _table(TABLE_HEADER, table_rows(summary), "summary"))
    if references:
        rows = [[policy, f"{r['mean_return']:+.2f}", f"{r['ci95'][0]:+.2f}..{r['ci95'][1]:+.2f}",
                 "-" if r.get("oracle_agreement") is None else f"{r['oracle_agreement']:.3f}"]
                for policy, r in references.items()]
        parts.append("<h3>Reference policies</h3>"
                     + _table(("policy", "mean return", "95% CI", "oracle agreement"), rows, "references"))
    parts.append("<h2>Evaluation videos</h2><p class='meta'>the action played (green where it agrees with the "
                 "oracle's, red where not), the oracle's action and the score, under each frame</p>")
    parts.append("<div class='videos'>")  # side by side: iterations compare at a glance
    for entry in evaluated_entries(summary):
        ev = entry["eval"]
        parts.append(f"<div class='iteration'><h3>iteration {entry['iteration']}: mean return "
                     f"{ev['mean_return']:+.2f}</h3>{_videos(exp_dir, entry)}</div>")
    parts.append("</div>")
    parts.append("<h2>Reflections</h2>")
    for entry in summary["iterations"]:
        if entry["iteration"] >= 1:
            parts.append(f"<h3>iteration {entry['iteration']}</h3>" + _reflection_cards(exp_dir, entry["iteration"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report_page(exp_dir: Path, summary: dict, references: dict[str, dict]) -> Path:
    """Writes ``report.html`` beside experiment_summary.json."""
    path = Path(exp_dir) / REPORT
    path.write_text(render_report_page(Path(exp_dir).resolve(), summary, references))
    return path
