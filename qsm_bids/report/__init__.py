"""HTML reports: shared helpers for the participant and group pages.

Pages are rendered with jinja2 with autoescaping on, so labels and table
values from the data are always shown as text. Figures are embedded as
base64 PNG data URIs so a page opens offline as a single file.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jinja2

__all__ = ["figure_to_data_uri", "render_template", "new_figure"]

_TEMPLATES = Path(__file__).parent / "templates"


def new_figure(*args, **kwargs):
    """A matplotlib Figure that does not touch pyplot's global state (thread safe, no GUI)."""
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def figure_to_data_uri(fig, dpi: int = 80) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor=fig.get_facecolor())
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_template(name: str, **context) -> str:
    """Render ``report/templates/<name>`` with autoescaping on."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(name).render(**context)
