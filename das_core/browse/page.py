"""The one page of ``das browse`` (``build_page``): inline HTML, CSS and JavaScript, nothing fetched from
elsewhere. It talks to the server's JSON routes (``das_core.browse.server``) and plays ``/audio`` answers:

- a text box (the run's text search), a label list and a minimum score; without text, the label's best
  windows; each result with its player, file, time, score and DAS label;
- "timeline" on a result draws its file's windows coloured by label; a click plays one;
- "more like this" ranks the run against that window's stored embedding.

A player whose audio is refused or missing shows the server's one-line reason in its place.
"""

from __future__ import annotations

import html
import json

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:1em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.3em;margin:.2em 0}form{display:flex;gap:.5em;flex-wrap:wrap;align-items:center;margin:.6em 0}
input[type=search]{flex:1;min-width:280px;font-size:15px;padding:.35em}select,input,button{font-size:14px}
#status{color:#555;font-size:13px}#status .warn{color:#a33}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e3e3e3;padding:.25em .5em;text-align:left;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums}.path{font-family:monospace;font-size:12px;
word-break:break-all}audio{height:32px;width:240px}.note{color:#a33;font-size:12px}#message{color:#a33}
.timeline{display:flex;gap:1px;margin:.4em 0}.timeline button{height:38px;border:0;padding:0;cursor:pointer;
min-width:3px}.timeline button.playing{outline:3px solid #000}.legend span{display:inline-block;
margin-right:1em}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
#timeline{border:1px solid #ccc;padding:.5em;margin:.8em 0}#timeline[hidden]{display:none}"""

BODY = """<h1>das browse: <span class="path" id="run"></span></h1>
<div id="status">loading...</div>
<form id="form">
  <input type="search" id="q" placeholder="describe a sound, e.g. glass breaking at night" autofocus>
  <select id="label"><option value="">any label</option></select>
  <label>min score <input type="number" id="min" step="0.01" style="width:6em"></label>
  <label>show <input type="number" id="top" value="20" min="1" max="200" style="width:4.5em"></label>
  <button type="submit" id="go">search</button>
</form>
<div id="timeline" hidden><b class="path" id="tl-file"></b> <small id="tl-info"></small>
  <div class="timeline" id="tl-bar"></div><div class="legend" id="tl-legend"></div>
  <audio id="tl-player" controls preload="none"></audio> <span class="note" id="tl-note"></span></div>
<p id="message"></p><h2 id="title" style="font-size:1.1em"></h2>
<table id="results"><thead><tr><th>listen</th><th>file</th><th>time</th><th>score</th><th>DAS label</th>
<th></th></tr></thead><tbody></tbody></table>"""

SCRIPT = """const PALETTE = @PALETTE@;
const $ = s => document.querySelector(s);
const colours = {};
const colour = lb => colours[lb] || (colours[lb] = PALETTE[Object.keys(colours).length % PALETTE.length]);
const clock = s => Math.floor(s / 60) + ':' + (s % 60).toFixed(1).padStart(4, '0');
async function getJSON(url) {
  const r = await fetch(url); const text = await r.text();
  if (!r.ok) throw new Error(text); return JSON.parse(text);
}
const audioURL = h => '/audio?file=' + encodeURIComponent(h.file_id) + '&segment=' + h.segment;
async function explain(player, note) {
  const r = await fetch(player.getAttribute('src'));
  if (!r.ok) note.textContent = 'cannot play (' + r.status + '): ' + await r.text();
}
function player(h) {
  const a = document.createElement('audio');
  a.controls = true; a.preload = 'none'; a.src = audioURL(h); a.dataset.seconds = (h.end_s - h.start_s).toFixed(3);
  const note = document.createElement('div'); note.className = 'note';
  a.addEventListener('error', () => explain(a, note));
  const cell = document.createElement('td'); cell.append(a, note); return cell;
}
function cell(text, cls) { const td = document.createElement('td'); td.textContent = text;
  if (cls) td.className = cls; return td; }
function button(text, cls, action) { const b = document.createElement('button'); b.type = 'button';
  b.textContent = text; b.className = cls; b.addEventListener('click', action); return b; }
function render(hits, title) {
  $('#title').textContent = title; const body = $('#results tbody'); body.replaceChildren();
  for (const h of hits) {
    const tr = document.createElement('tr'); tr.className = 'hit';
    tr.dataset.file = h.file_id; tr.dataset.segment = h.segment;
    const actions = document.createElement('td');
    actions.append(button('timeline', 'open-timeline', () => timeline(h.file_id)), ' ',
                   button('more like this', 'like', () => like(h)));
    tr.append(player(h), cell(h.path, 'path'), cell(clock(h.start_s) + ' \\u2013 ' + clock(h.end_s)),
              cell(h.score == null ? '' : h.score.toFixed(3), 'num'),
              cell((h.label || '') + (h.label_score == null ? '' : ' ' + h.label_score.toFixed(3)), 'label'), actions);
    body.append(tr);
  }
  if (!hits.length) $('#title').textContent = title + ': nothing matches';
}
async function run(url, title) {
  $('#message').textContent = '';
  try { const answer = await getJSON(url); render(answer.results, title + ' (' + answer.seconds.toFixed(2) + ' s)'); }
  catch (e) { $('#message').textContent = e.message; render([], title); }
}
function search(event) {
  if (event) event.preventDefault();
  const q = $('#q').value.trim(), label = $('#label').value;
  const params = new URLSearchParams({q: q, label: label, min_score: $('#min').value, top: $('#top').value});
  const title = q ? 'windows like "' + q + '"' + (label ? ' labelled ' + label : '')
                  : 'best windows' + (label ? ' labelled ' + label : ' of any label');
  run('/api/search?' + params, title);
}
function like(h) {
  const params = new URLSearchParams({file: h.file_id, segment: h.segment, top: $('#top').value});
  run('/api/like?' + params, 'more like ' + h.path + ' at ' + clock(h.start_s));
}
async function timeline(fileId) {
  const box = $('#timeline'); box.hidden = false; $('#tl-note').textContent = '';
  let t; try { t = await getJSON('/api/timeline?file=' + encodeURIComponent(fileId)); }
  catch (e) { $('#tl-note').textContent = e.message; return; }
  $('#tl-file').textContent = t.path;
  $('#tl-info').textContent = '(' + t.windows.length + ' windows, ' + clock(t.duration_s || 0) + ')';
  const bar = $('#tl-bar'); bar.replaceChildren(); const tlPlayer = $('#tl-player');
  for (const w of t.windows) {
    const b = document.createElement('button'); b.type = 'button';
    b.style.flex = Math.max(w.end_s - w.start_s, 0.01).toFixed(2); b.style.background = colour(w.label);
    b.title = clock(w.start_s) + ' \\u2013 ' + clock(w.end_s) + ': ' + w.label + ' (' + (w.score || 0).toFixed(3) + ')';
    b.dataset.src = audioURL(w);
    b.addEventListener('click', () => {
      bar.querySelectorAll('button.playing').forEach(x => x.classList.remove('playing'));
      b.classList.add('playing'); $('#tl-note').textContent = '';
      tlPlayer.src = b.dataset.src; tlPlayer.play().catch(() => explain(tlPlayer, $('#tl-note')));
    });
    bar.append(b);
  }
  $('#tl-legend').replaceChildren(...[...new Set(t.windows.map(w => w.label))].map(lb => {
    const s = document.createElement('span'); const i = document.createElement('i'); i.style.background = colour(lb);
    s.append(i, lb); return s; }));
  box.scrollIntoView();
}
async function status() {
  const s = await getJSON('/api/status'); $('#run').textContent = s.uri;
  const text = s.text_search === 'ready' ? 'text search ready'
    : '<span class="warn">' + s.text_search.replace(/&/g, '&amp;').replace(/</g, '&lt;') + '</span>';
  $('#status').innerHTML = (s.windows == null ? '' : s.windows + ' windows, ') + s.files_units + ' unit(s); ' +
    text + '; ranking: ' + s.ranking.replace(/</g, '&lt;');
  $('#status').dataset.text = s.text_search;
  if (s.loading) setTimeout(status, 500);
  return s;
}
$('#tl-player').addEventListener('error', () => explain($('#tl-player'), $('#tl-note')));
$('#form').addEventListener('submit', search);
status().then(s => { for (const lb of s.labels) { const o = document.createElement('option'); o.value = lb;
  o.textContent = lb; $('#label').append(o); } });"""

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD"]


def build_page(uri: str) -> str:
    """The page of ``das browse`` over the run at ``uri`` (its data comes from the JSON routes)."""
    script = SCRIPT.replace("@PALETTE@", json.dumps(PALETTE))
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>das browse: {html.escape(uri)}</title>", f"<style>{STYLE}</style></head><body>",
                      BODY, f"<script>{script}</script>", "</body></html>", ""])
