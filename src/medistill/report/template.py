"""The report's page: one HTML5 document with inline CSS, no scripts and no external resources.

``PAGE`` is a :class:`string.Template`; :mod:`medistill.report.html` fills ``$title``, ``$subtitle``, ``$nav``
and ``$body`` with already-escaped HTML.
"""

from __future__ import annotations

from string import Template

CSS = """
:root { --ink: #1d2330; --muted: #5d6675; --line: #dde1e8; --bg: #f6f7f9; --card: #ffffff;
        --accent: #1f4e99; --good: #1e7b34; --bad: #b3261e; --warn-bg: #fff6e0; --warn-line: #e8c25a; }
* { box-sizing: border-box; }
html { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); line-height: 1.45; font-size: 15px; }
body { margin: 0; }
header.top { background: var(--ink); color: #fff; padding: 1.4rem 2rem 1.1rem; }
header.top h1 { margin: 0 0 .3rem; font-size: 1.6rem; font-weight: 600; }
header.top .sub { color: #c9d1de; font-size: .92rem; }
header.top dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .8rem 0 0;
                font-size: .85rem; color: #dfe5ee; }
header.top dt { font-weight: 600; color: #fff; }
header.top dd { margin: 0; }
nav.toc { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid var(--line);
          padding: .5rem 2rem; display: flex; flex-wrap: wrap; gap: .25rem 1.1rem; font-size: .88rem; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
main { max-width: 1400px; margin: 0 auto; padding: 1rem 2rem 3rem; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.4rem 1.2rem;
          margin: 1.2rem 0; }
section > h2 { margin: 0 0 .6rem; font-size: 1.25rem; color: var(--accent); }
h3 { font-size: 1.02rem; margin: 1.1rem 0 .4rem; }
p.lead, p.note { color: var(--muted); margin: .2rem 0 .8rem; font-size: .9rem; }
.notes { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 6px; padding: .5rem 1rem;
         margin: 1rem 0; font-size: .9rem; }
.notes ul { margin: .2rem 0; padding-left: 1.2rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .86rem; margin: .4rem 0 .8rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: .32rem .65rem; text-align: right; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
tbody tr:hover { background: #f3f6fb; }
table.kv td:first-child { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .82rem;
                          color: var(--muted); }
.role { display: inline-block; padding: .05rem .5rem; border-radius: 999px; color: #fff; font-size: .78rem;
        white-space: nowrap; }
.ci { color: var(--muted); font-size: .8rem; }
.good { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
figure { margin: .6rem 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figcaption { font-size: .84rem; color: var(--muted); margin-top: .25rem; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.figs figure { flex: 0 1 auto; }
.figs.wide img { max-width: min(100%, 900px); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: .8rem; }
.gallery figure { margin: 0; }
.gallery img { width: 100%; }
table.pairs td, table.pairs th { text-align: center; vertical-align: middle; }
table.compare td { white-space: nowrap; }
code.path { word-break: break-all; font-size: .75rem; }
td:has(> code.path) { max-width: 24rem; text-align: left; }
table.pairs td:first-child { text-align: left; font-size: .84rem; }
table.pairs img { width: 220px; max-width: 32vw; border: 1px solid var(--line); border-radius: 4px; }
details { margin: .4rem 0; }
summary { cursor: pointer; color: var(--accent); font-size: .92rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em;
       background: #eef1f5; padding: .05rem .3rem; border-radius: 3px; }
footer { color: var(--muted); font-size: .8rem; text-align: center; padding: 1rem; }
@media print { nav.toc { position: static; } section { break-inside: avoid; } }
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="medistill report">
<title>$title</title>
<style>$css</style>
</head>
<body>
<header class="top">
<h1>$title</h1>
<div class="sub">$subtitle</div>
$header
</header>
<nav class="toc">$nav</nav>
<main>
$body
</main>
<footer>$footer</footer>
</body>
</html>
""")
