"""Single-key review on the Review page: Streamlit has no key bindings, so a small script maps keys to the
buttons of the post under review (the outlined card), and the page shows the keys.

The page gives each post's card the key `review-card-<post_id>` and its buttons the keys `approve-`, `reject-`,
`edit-` and `pick-` + id; Streamlit turns a key into the CSS class `st-key-<key>` (characters other than
letters, digits, `-` and `_` become `-`), which is all the script looks for. It acts on the first card not yet
decided in this tab, so A, A, A approves the queue from the top while each decision's rerun removes its card;
a card whose button was pressed is skipped at once, so a key pressed again before the rerun never decides a
post twice. Keys are ignored while a text box has the focus (Escape leaves it) and with Ctrl, Alt or Cmd.
"""

from __future__ import annotations

CARD_KEY = "review-card-"  # + post_id: the container of one waiting post

# (keys, what they do): the legend drawn on the page, in the order the script handles them.
REVIEW_KEYS = (
    ("A", "approve"),
    ("R", "reject (pick mode: none of these)"),
    ("1-9", "pick that candidate (pick mode)"),
    ("E", "edit: open the text box (Escape leaves it)"),
    ("J / ↓", "next post"),
    ("K / ↑", "previous post"),
)

SCRIPT = """
<script>
(() => {
  const doc = document;  // st.html is not iframed: this is the app's own page
  if (doc.crowdtuneReviewKeys) return;  // one listener per tab, however often the page is drawn
  doc.crowdtuneReviewKeys = true;
  const decided = new Set();  // card classes whose decision was sent: skipped until the rerun removes them
  let current = 0;
  const cardClass = (card) => [...card.classList].find((c) => c.startsWith("st-key-CARD"));
  const cards = () => [...doc.querySelectorAll('[class*="st-key-CARD"]')]
    .filter((card) => !decided.has(cardClass(card)));
  const mark = () => {
    const open = cards();
    current = Math.max(0, Math.min(current, open.length - 1));
    doc.querySelectorAll('[class*="st-key-CARD"]').forEach((card) => {
      const on = card === open[current];
      card.style.outline = on ? "3px solid #ff4b4b" : "";
      card.style.outlineOffset = on ? "4px" : "";
      card.style.opacity = decided.has(cardClass(card)) ? "0.35" : "";
    });
  };
  const press = (card, selector, index = 0) => {
    // The index-th keyed button of the card (one container per button); the one drawn, should it have a twin.
    const holder = card.querySelectorAll(`[class*="st-key-${selector}"]`)[index];
    const button = holder && [...holder.querySelectorAll("button")].find((b) => b.offsetParent !== null);
    if (!button || button.disabled) return false;
    decided.add(cardClass(card));
    button.click();
    return true;
  };
  doc.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && target.closest && target.closest("textarea, input, [contenteditable='true']")) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const open = cards();
    if (!open.length) return;
    current = Math.max(0, Math.min(current, open.length - 1));
    const card = open[current];
    const key = event.key.toLowerCase();
    if (key === "a") press(card, "approve-");
    else if (key === "r") press(card, "reject-");
    else if (/^[1-9]$/.test(key)) press(card, "pick-", Number(key) - 1);
    else if (key === "e") {
      const summary = card.querySelector("details summary");
      const details = card.querySelector("details");
      if (summary && details && !details.open) summary.click();
      setTimeout(() => {  // the caret at the end: a person adds to the post, and types nothing before it
        const box = card.querySelector("textarea");
        if (box) { box.focus(); box.setSelectionRange(box.value.length, box.value.length); }
      }, 80);
    } else if (key === "j" || key === "arrowdown") current = Math.min(current + 1, open.length - 1);
    else if (key === "k" || key === "arrowup") current = Math.max(current - 1, 0);
    else return;
    event.preventDefault();
    mark();
    if (key === "j" || key === "k" || key.startsWith("arrow")) open[current].scrollIntoView({block: "nearest"});
  });
  let queued = false;  // one redraw of the outline per frame, however many nodes a rerun replaced
  new MutationObserver(() => {
    if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; mark(); }); }
  }).observe(doc.body, {childList: true, subtree: true});
  mark();
})();
</script>
""".replace("CARD", CARD_KEY)


def review_keys() -> None:
    """Draw the keys' legend and install the script (once per browser tab) on the Review page."""
    import streamlit as st

    st.caption("Keys: " + " · ".join(f"**{keys}** {what}" for keys, what in REVIEW_KEYS)
               + ". They act on the outlined post.")
    st.html(SCRIPT, unsafe_allow_javascript=True)
