"""The dashboard's HTML, rendered on the server: readable with JavaScript off.

The pages hold no inline script or style (the CSP is ``default-src 'self'``): the live view
is ``dashboard.js``, which finds what it needs in ``data-`` attributes and the tables' headers.
Every value from a run is escaped; asset URLs carry a hash of the file, so they can be cached
for a year and still change with fedfuse.
"""

from __future__ import annotations

import hashlib
from functools import cache
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedfuse.service._dashboard_view import COLUMNS

__all__ = ["ASSETS", "asset", "index_page", "login_page", "message_page", "run_page"]

ASSET_DIR = Path(__file__).with_name("dashboard")
#: The files the dashboard serves: name -> media type (nothing else is readable).
ASSETS = {
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}


@cache
def asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and a short hash of them (read once)."""
    data = (ASSET_DIR / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


def _url(name: str) -> str:
    return f"/dashboard/assets/{name}?v={asset(name)[1]}"


def _shell(title: str, body: str, *, live: bool = False) -> str:
    scripts = (
        f'<script src="{_url("uPlot.iife.min.js")}" defer></script>'
        f'<script src="{_url("dashboard.js")}" defer></script>'
        if live
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - fedfuse</title>"
        f'<link rel="stylesheet" href="{_url("uPlot.min.css")}">'
        f'<link rel="stylesheet" href="{_url("dashboard.css")}">{scripts}</head>'
        f'<body><header><a href="/dashboard">fedfuse dashboard</a></header><main>{body}</main>'
        "</body></html>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def index_page(runs: list[dict[str, Any]]) -> str:
    """The list of runs, each a link to its live page."""
    rows = "".join(
        f'<tr><td><a href="/dashboard/federations/{quote(r["id"])}">{escape(r["title"])}</a></td>'
        f"<td>{escape(str(r['status']))}</td><td>{escape(str(r['done']))}</td></tr>"
        for r in runs
    )
    empty = "" if runs else '<tr><td colspan="3">no federations yet</td></tr>'
    table = (
        '<table id="runs"><thead><tr><th>run</th><th>status</th><th>rounds</th></tr></thead>'
        f"<tbody>{rows}{empty}</tbody></table>"
    )
    return _shell("federations", f"<h1>Federations</h1>{table}")


def _rounds_table(kind: str, points: list[dict[str, Any]]) -> str:
    columns = COLUMNS[kind]
    head = "".join(f'<th data-key="{key}">{escape(label)}</th>' for key, label in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(p.get(key))}</td>" for key, _ in columns) + "</tr>"
        for p in points
    )
    return f'<table id="rounds"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _parties_table(parties: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr data-state="{escape(p["state"])}"><td>{escape(p["party"])}</td>'
        f"<td>{_cell(p['name'])}</td><td>{escape(p['state'])}</td><td>{_cell(p['reason'])}</td></tr>"
        for p in parties
    )
    return (
        '<table id="parties"><thead><tr><th>party</th><th>name</th><th>state</th>'
        f"<th>last rejection or failure</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def run_page(view: dict[str, Any]) -> str:
    """One run: charts (drawn by the script) over the tables of rounds and parties."""
    fid = quote(view["id"])
    error = f'<p class="error">{escape(view["error"])}</p>' if view.get("error") else ""
    parties = ""
    if view["kind"] == "federation":
        parties = f"<h2>Parties</h2>{_parties_table(view['parties'])}"
    body = (
        f"<h1>{escape(view['title'])}</h1>"
        f'<p>status: <span id="status">{escape(view["status"])}</span></p>{error}'
        f'<section id="live" data-events="/v1/federations/{fid}/events" '
        f'data-kind="{escape(view["kind"])}" data-points="0"></section>{parties}'
        f"<h2>{'Epochs' if view['kind'] == 'consensus' else 'Rounds'}</h2>"
        f"{_rounds_table(view['kind'], view['points'])}"
    )
    return _shell(view["title"], body, live=True)


def message_page(title: str, text: str) -> str:
    """A page that only says something (a run that does not exist)."""
    return _shell(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p>")


def login_page(message: str = "", federation: str = "") -> str:
    """The form that turns an API key or party token into the dashboard's cookie."""
    note = f'<p class="error">{escape(message)}</p>' if message else ""
    form = (
        '<form method="post" action="/dashboard/login">'
        '<label>API key or party token <input type="password" name="key" required '
        'autocomplete="current-password"></label>'
        "<label>federation id (for a party token) "
        f'<input type="text" name="federation" value="{escape(federation)}"></label>'
        '<button type="submit">open the dashboard</button></form>'
    )
    return _shell("log in", f"<h1>Log in</h1>{note}{form}")
