"""The dashboard's Jinja2 templates, CSS and JS, as strings in a DictLoader: the installed wheel
packages only top-level modules, and nothing is fetched from the internet. Autoescape is on."""
from __future__ import annotations

from jinja2 import DictLoader, Environment, select_autoescape

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:.5em 1em;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:1em;max-width:1100px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top;overflow-wrap:break-word}
tr.failed td{background:#fde8e8}.state-failed{color:#b00;font-weight:bold}
.box{background:#fff;border:1px solid #ddd;padding:1em;margin:1em 0}
.note{background:#eef6ee;border:1px solid #9c9;padding:.6em}.err{background:#fde8e8;border-color:#c99}
pre{white-space:pre-wrap;margin:0}
form.filters{display:flex;gap:.5em;flex-wrap:wrap;margin-bottom:1em}
button,.button{padding:.3em .8em}
@media (max-width:600px){td,th{font-size:.85em;padding:.2em}}
"""

JS = """
// refresh the page's <main> every few seconds without a full reload
(function () {
  var main = document.getElementById("main");
  if (!main || !main.dataset.refresh) return;
  var every = parseFloat(main.dataset.refresh) * 1000;
  setInterval(function () {
    fetch(window.location.href, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) return null;
      return r.text();
    }).then(function (text) {
      if (!text) return;
      var doc = new DOMParser().parseFromString(text, "text/html");
      var fresh = doc.getElementById("main");
      if (fresh) main.innerHTML = fresh.innerHTML;
    }).catch(function () {});
  }, every);
})();
"""

BASE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}upq{% endblock %} - upq</title><link rel="stylesheet" href="/static/upq.css"></head>
<body><header><b>upq</b> <span>{{ node }}</span>
{% if csrf %}<a href="/">Overview</a><a href="/jobs">Jobs</a>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{{ csrf }}"><button>Log out</button></form>{% endif %}
</header>
<main id="main"{% if refresh %} data-refresh="{{ refresh }}"{% endif %}>{% block main %}{% endblock %}</main>
<script src="/static/upq.js"></script></body></html>"""

LOGIN = """{% extends "base.html" %}{% block title %}Log in{% endblock %}{% block main %}
<h1>Log in</h1>{% if error %}<p class="note err">{{ error }}</p>{% endif %}
<form method="post" action="/login"><label>Token <input type="password" name="token" autofocus></label>
<button type="submit">Log in</button></form>{% endblock %}"""

OVERVIEW = """{% extends "base.html" %}{% block title %}Overview{% endblock %}{% block main %}
<h1>Overview</h1>
<table><tr><th>type</th><th>queued</th><th>running</th><th>done</th><th>failed</th><th>cancelled</th>
<th>workers busy</th><th>oldest due</th><th>finished 1 min / 1 h</th><th></th></tr>
{% for t in types %}<tr class="{{ 'failed' if t.failed else '' }}">
<td><a href="/jobs?type={{ t.name|urlencode }}">{{ t.name }}</a>{% if t.paused %} <strong>paused</strong>{% endif %}</td>
<td><a href="/jobs?type={{ t.name|urlencode }}&state=new">{{ t.new }}</a></td>
<td><a href="/jobs?type={{ t.name|urlencode }}&state=running">{{ t.running }}</a></td>
<td>{{ t.done }}</td>
<td><a href="/jobs?type={{ t.name|urlencode }}&state=failed">{{ t.failed }}</a></td><td>{{ t.cancelled }}</td>
<td>{{ t.busy }} of {{ t.workers }}</td><td>{{ t.oldest }}</td><td>{{ t.minute }} / {{ t.hour }}</td>
<td>{% if t.failed %}<a href="/confirm?action=retry_all&type={{ t.name|urlencode }}">retry all failed</a>{% endif %}</td></tr>
{% else %}<tr><td colspan="10">no job types</td></tr>{% endfor %}</table>
<h2>Nodes</h2><table><tr><th>node</th><th>state</th><th>heartbeat</th><th>running</th><th>jobs</th></tr>
{% for n in nodes %}<tr><td>{{ n.node }}</td><td>{{ n.state }}</td><td>{{ n.age }}</td><td>{{ n.running }}</td>
<td>{{ n.jobs }}</td></tr>{% endfor %}</table>{% endblock %}"""

JOBS = """{% extends "base.html" %}{% block title %}Jobs{% endblock %}{% block main %}
<h1>Jobs</h1>
<form class="filters" method="get" action="/jobs">
<select name="type"><option value="">any type</option>{% for t in type_names %}
<option value="{{ t }}"{% if t == f.type %} selected{% endif %}>{{ t }}</option>{% endfor %}</select>
<select name="state"><option value="">any state</option>{% for s in states %}
<option value="{{ s }}"{% if s == f.state %} selected{% endif %}>{{ s }}</option>{% endfor %}</select>
<input name="node" placeholder="node" value="{{ f.node }}"><input name="q" placeholder="text in params or msg" value="{{ f.q }}">
<button type="submit">Filter</button></form>
<table><tr><th>jobid</th><th>type</th><th>state</th><th>created</th><th>node</th><th>msg</th></tr>
{% for j in rows %}<tr class="{{ 'failed' if j.state == 'failed' else '' }}">
<td><a href="/jobs/{{ j.jobid }}">{{ j.jobid }}</a></td><td>{{ j.jobname }}</td>
<td class="state-{{ j.state }}">{{ j.state }}</td><td>{{ j.created }}</td><td>{{ j.node or "" }}</td><td>{{ j.msg }}</td></tr>
{% else %}<tr><td colspan="6">no jobs</td></tr>{% endfor %}</table>
<p>{% if first_link %}<a href="{{ first_link }}">newest</a> {% endif %}{% if next_link %}<a href="{{ next_link }}">older &raquo;</a>{% endif %}</p>
{% endblock %}"""

JOB = """{% extends "base.html" %}{% block title %}Job {{ j.jobid }}{% endblock %}{% block main %}
<h1>Job {{ j.jobid }}: {{ j.jobname }} <span class="state-{{ j.state }}">{{ j.state }}</span></h1>
<p class="note" id="why">{{ why }}</p>
<table>
<tr><th>params</th><td><pre>{{ params }}</pre></td></tr>
<tr><th>msg</th><td><pre>{{ j.msg }}</pre></td></tr>
<tr><th>result</th><td><pre>{{ result }}</pre></td></tr>
<tr><th>attempts</th><td>{{ j.attempts }}</td></tr>
<tr><th>created</th><td>{{ j.created }}</td></tr><tr><th>due</th><td>{{ j.run_after or "" }}</td></tr>
<tr><th>started</th><td>{{ j.started or "" }}</td></tr><tr><th>finished</th><td>{{ j.finished or "" }}</td></tr>
<tr><th>duration</th><td>{{ duration }}</td></tr><tr><th>node</th><td>{{ j.node or "" }}</td></tr>
<tr><th>parent</th><td>{% if j.parent %}<a href="/jobs/{{ j.parent }}">{{ j.parent }}</a>{% endif %}</td></tr>
<tr><th>children</th><td>{% for c in children %}<a href="/jobs/{{ c.jobid }}">{{ c.jobid }}</a> ({{ c.state }}) {% endfor %}</td></tr>
</table>
<p>{% if can_retry %}<a class="button" id="retry" href="/confirm?action=retry&id={{ j.jobid }}">Retry</a>{% endif %}
{% if can_cancel %}<a class="button" id="cancel" href="/confirm?action=cancel&id={{ j.jobid }}">Cancel</a>{% endif %}</p>
{% endblock %}"""

CONFIRM = """{% extends "base.html" %}{% block title %}Confirm{% endblock %}{% block main %}
<h1>{{ question }}</h1>
<form method="post" action="/action"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="action" value="{{ action }}"><input type="hidden" name="id" value="{{ jobid }}">
<input type="hidden" name="type" value="{{ type }}">
<button type="submit" id="confirm">Yes, {{ verb }}</button> <a href="{{ back }}">No, go back</a></form>{% endblock %}"""

DONE = """{% extends "base.html" %}{% block title %}Done{% endblock %}{% block main %}
<p class="note{{ ' err' if error else '' }}" id="outcome">{{ message }}</p>
<p><a href="{{ back }}" id="back">back</a></p>{% endblock %}"""


def environment() -> Environment:
    """The dashboard's template environment (autoescaped HTML)."""
    return Environment(loader=DictLoader({"base.html": BASE, "login.html": LOGIN, "overview.html": OVERVIEW,
                                          "jobs.html": JOBS, "job.html": JOB, "confirm.html": CONFIRM,
                                          "done.html": DONE}),
                       autoescape=select_autoescape(default=True, default_for_string=True))
