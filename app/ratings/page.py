"""The rater page, served by the API at ``/rate/{token}``: plain HTML, CSS and JS, no CDN.

It talks to two endpoints with the rater's token as a bearer token (an invite token, or an API
key for the tenant's own people):

``GET /v1/comparisons/{id}/next`` → ``200``::

    {"ticket": "3f2a…", "prompt": "Write a haiku", "a": "left answer", "b": "right answer"}

or, when this rater has voted on everything, ``200 {"done": true}``. The ticket is opaque: model
names never reach the page (:mod:`app.ratings.pairing`).

``POST /v1/comparisons/{id}/votes`` with ``{"ticket": "3f2a…", "choice": "a" | "b" | "tie" |
"both_bad", "note": "optional text"}`` → ``201 {"votes": <this rater's total>}``; ``409`` when
the pair was already voted on (the page then simply asks for the next one). Any other error
body is shown as ``{"error": {"message": "…"}}``'s message, or its status.

Keys: ``1`` or ``←`` left is better, ``2`` or ``→`` right is better, ``3`` or ``t`` tie, ``4`` or
``x`` both bad, ``n`` writes a note (Esc leaves it). Answers sit side by side on wide screens and
stack on a phone.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d1d1f;
background:#f5f5f7}
header{padding:.6rem 1rem;background:#1d1d1f;color:#fff;display:flex;justify-content:space-between}
main{max-width:72rem;margin:0 auto;padding:1rem}
#prompt{background:#fff;border-radius:.5rem;padding:1rem;white-space:pre-wrap;margin-bottom:1rem}
.answers{display:flex;gap:1rem}
.answer{flex:1;min-width:0;background:#fff;border-radius:.5rem;padding:1rem;white-space:pre-wrap;
overflow-wrap:anywhere}
.answer h2{margin:0 0 .5rem;font-size:1rem;color:#6e6e73}
.buttons{display:grid;grid-template-columns:repeat(4,1fr);gap:.5rem;margin:1rem 0}
button{font:inherit;padding:.8rem .4rem;border:0;border-radius:.5rem;background:#0a66c2;color:#fff;
cursor:pointer}
button.alt{background:#6e6e73}
button:disabled{opacity:.5}
kbd{font-size:.75em;opacity:.8}
textarea{width:100%;font:inherit;padding:.5rem;border-radius:.5rem;border:1px solid #ccc}
#status{min-height:1.5rem;color:#6e6e73}
#status.error{color:#b00020}
@media (max-width:40rem){.answers{flex-direction:column}.buttons{grid-template-columns:1fr 1fr}}
"""

_JS = """
const cfg = JSON.parse(document.getElementById('cfg').textContent);
const base = cfg.api + '/v1/comparisons/' + encodeURIComponent(cfg.comparison);
const headers = {'Authorization': 'Bearer ' + cfg.token, 'Content-Type': 'application/json'};
let current = null, busy = false, votes = 0;
const $ = id => document.getElementById(id);
function status(text, error) {
  $('status').textContent = text; $('status').className = error ? 'error' : '';
}
function setBusy(b) { busy = b; document.querySelectorAll('button').forEach(x => x.disabled = b); }
async function failure(r) {
  try { const body = await r.json(); return (body.error && body.error.message) || r.status; }
  catch (e) { return r.status; }
}
async function next() {
  setBusy(true);
  try {
    const r = await fetch(base + '/next', {headers});
    if (!r.ok) { status('Could not load the next pair: ' + await failure(r), true); return; }
    const body = await r.json();
    if (body.done) {
      current = null; $('pair').hidden = true;
      status('All done — thank you! You voted ' + votes + ' times.'); return;
    }
    current = body; $('pair').hidden = false;
    $('prompt').textContent = body.prompt; $('a').textContent = body.a; $('b').textContent = body.b;
    $('note').value = ''; status('');
  } catch (e) { status('Network error: ' + e, true); }
  finally { setBusy(false); }
}
async function vote(choice) {
  if (!current || busy) return;
  setBusy(true);
  try {
    const note = $('note').value.trim();
    const r = await fetch(base + '/votes', {method: 'POST', headers,
      body: JSON.stringify({ticket: current.ticket, choice, note: note || null})});
    if (r.status === 409) { status('Already voted on that pair.'); }
    else if (!r.ok) { status('Vote not recorded: ' + await failure(r), true); return; }
    else {
      const body = await r.json(); votes = body.votes;
      $('count').textContent = votes + ' votes';
    }
  } catch (e) { status('Network error: ' + e, true); return; }
  finally { setBusy(false); }
  await next();
}
document.querySelectorAll('button[data-choice]').forEach(b =>
  b.addEventListener('click', () => vote(b.dataset.choice)));
const keys = {'1': 'a', 'ArrowLeft': 'a', '2': 'b', 'ArrowRight': 'b', '3': 'tie', 't': 'tie',
  '4': 'both_bad', 'x': 'both_bad'};
document.addEventListener('keydown', e => {
  if (e.target.tagName === 'TEXTAREA') { if (e.key === 'Escape') e.target.blur(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'n') { e.preventDefault(); $('note').focus(); return; }
  if (keys[e.key]) { e.preventDefault(); vote(keys[e.key]); }
});
next();
"""


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def page_headers(*, api_base: str = "") -> dict[str, str]:
    """Headers for the page: no caching, no referrer (the token is in the URL), never framed
    (a framing page could click the vote buttons), and a Content-Security-Policy that runs only
    this page's own script and style (by hash) and lets it talk only to the API."""
    connect = "'self'" if not api_base else f"'self' {api_base.rstrip('/')}"
    policy = (
        f"default-src 'none'; script-src {_sha256_source(_JS)}; "
        f"style-src {_sha256_source(_CSS)}; connect-src {connect}; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }


def render_page(comparison_id: str, token: str, *, api_base: str = "") -> str:
    """The whole page for one rater; ``api_base`` prefixes the API paths ("" = same origin)."""
    config = json.dumps({"comparison": comparison_id, "token": token, "api": api_base})
    config = config.replace("<", "\\u003c")  # never closes the script element
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Compare answers</title><style>{_CSS}</style></head>
<body><header><strong>Which answer is better?</strong><span id="count">0 votes</span></header>
<main>
<p id="status" role="status" aria-live="polite">Loading…</p>
<section id="pair" hidden>
<div id="prompt" aria-label="Prompt"></div>
<div class="answers">
<article class="answer"><h2>A (left)</h2><div id="a"></div></article>
<article class="answer"><h2>B (right)</h2><div id="b"></div></article>
</div>
<div class="buttons">
<button data-choice="a" id="vote-a">A is better <kbd>1 / ←</kbd></button>
<button data-choice="b" id="vote-b">B is better <kbd>2 / →</kbd></button>
<button data-choice="tie" id="vote-tie" class="alt">Tie <kbd>3 / t</kbd></button>
<button data-choice="both_bad" id="vote-both_bad" class="alt">Both bad <kbd>4 / x</kbd></button>
</div>
<label for="note">Note (optional, <kbd>n</kbd>)</label>
<textarea id="note" rows="2" maxlength="1000"></textarea>
</section>
</main>
<script type="application/json" id="cfg">{config}</script>
<script>{_JS}</script>
<noscript>{html.escape("This page needs JavaScript to load the answers.")}</noscript>
</body></html>
"""
