"""Shared pieces of the HTML reports: the style sheet, escaping and atomic writes."""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path
from typing import Any

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa;line-height:1.45}
header{background:#1f3b57;color:#fff;padding:1.2em 2em}
header h1{margin:0 0 .2em;font-size:1.6em}header p{margin:0;opacity:.85}
nav{position:sticky;top:0;background:#2c5478;padding:.4em 2em;z-index:1}
nav a{color:#fff;margin-right:1.5em;text-decoration:none;font-weight:600}
main{max-width:1280px;margin:0 auto;padding:1em 2em 3em}
h2{border-bottom:2px solid #2c5478;padding-bottom:.2em;margin-top:1.6em}
h3{margin:1.2em 0 .4em;color:#2c5478}
table{border-collapse:collapse;margin:.3em 0;background:#fff}
th,td{border:1px solid #d5dbe1;padding:.25em .6em;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#eef2f6;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:.2em 1.6em;
align-items:start}.card{min-width:0}.wide{grid-column:1/-1}.card>table{width:100%}
table.kv>tbody>tr>th{width:12em}
td table{margin:0;width:100%}
ul{margin:.2em 0;padding-left:1.3em}
.warnings{background:#fff4e0;border-left:6px solid #e68a00;padding:.6em 1.2em;margin:1em 0}
.none{color:#888}
figure{margin:1.2em 0;background:#fff;border:1px solid #d5dbe1;padding:.8em}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{margin-top:.5em;font-size:.93em}figcaption code{color:#555}
.missing{background:#fdecea;border-left:6px solid #c0392b}
pre{background:#f0f0f0;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}
footer{color:#888;font-size:.85em;text-align:center;padding:1em}
"""


def escape(text: Any) -> str:
    """Return ``str(text)`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
