"""The HTML report of a run: one self-contained page (each PNG inlined as a data: URL, no
script, no network) with headed sections of pictures, text and preformatted tables, which
opens in any browser and can be mailed as one file."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
p.headline { font-size: 1.15em; font-weight: 600; }
"""


@dataclass
class Figure:
    """A PNG on disk shown with a caption; `key` names it in the page (data-panel)."""

    key: str
    path: Path
    caption: str


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    pre: str | None = None


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.path.read_bytes()).decode()
    cap = html.escape(f.caption)
    return (f'<figure data-panel="{html.escape(f.key)}"><img alt="{cap}" '
            f'src="data:image/png;base64,{data}"><figcaption>{cap}</figcaption></figure>')


def render(title: str, headline: str, sections: list[Section]) -> str:
    """The page as text."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if headline:
        body.append(f'<p class="headline">{html.escape(headline)}</p>')
    for s in sections:
        body.append(f"<h2>{html.escape(s.heading)}</h2>")
        body += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        body += [_figure(f) for f in s.figures]
        if s.pre is not None:
            body.append(f"<pre>{html.escape(s.pre)}</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(path: Path, title: str, headline: str, sections: list[Section]) -> Path:
    path.write_text(render(title, headline, sections), encoding="utf-8")
    return path
