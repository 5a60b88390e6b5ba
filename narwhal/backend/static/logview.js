// A job's log that keeps up with thousands of lines: lines wait in a queue and are
// drawn once per animation frame in one DocumentFragment (a bounded number per
// frame, so a flood never freezes the page); at most MAX_LINES stay in the page,
// the earliest give way and a link to the full log says so.

import { AnsiParser, installPalette, renderSegments } from "./ansi.js";
import { h } from "./dom.js";

export const MAX_LINES = 20000;
/** Milliseconds of drawing per frame (at least MIN_LINES lines), so input stays responsive. */
const BUDGET = 10;
const MIN_LINES = 100;
/** Lines per block: the page lays out only the blocks in view (content-visibility). */
const CHUNK = 200;

export class LogView {
  constructor({ fullLogHref, maxLines = MAX_LINES }) {
    installPalette();
    this.maxLines = maxLines;
    this.parser = new AnsiParser();
    this.pending = [];
    this.hidden = 0;
    this.number = 0;
    this.count = 0;
    this.frame = 0;
    this.follow = true;
    this.said = h("span", { class: "hidden-count" });
    this.notice = h("div", { class: "log-notice", hidden: true }, this.said, " — ",
      h("a", { href: fullLogHref, target: "_blank", rel: "noopener" }, "full log"));
    this.lines = h("div", { class: "log-lines" });
    this.empty = h("div", { class: "log-empty" }, "No output yet.");
    this.el = h("div", { class: "log", role: "log", "aria-live": "off" },
      this.notice, this.empty, this.lines);
    this.el.addEventListener("scroll", () => {
      const el = this.el;
      this.follow = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    });
  }

  /** Lines arrived; reset: they replace everything shown. */
  add(lines, reset = false) {
    if (reset) this.clear();
    for (const line of lines) this.pending.push(String(line));
    // Lines that would be dropped right after being drawn are counted, not drawn.
    const over = this.pending.length - this.maxLines;
    if (over > 0) {
      // Parsed all the same: their colours carry on to the lines after them.
      for (const text of this.pending.splice(0, over)) this.parser.segments(text);
      this.number += over;
      this.dropped(over);
    }
    if (!this.frame && this.pending.length) {
      this.frame = requestAnimationFrame(() => this.draw());
    }
  }

  clear() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.pending = [];
    this.hidden = 0;
    this.number = 0;
    this.count = 0;
    this.parser.reset();
    this.lines.replaceChildren();
    this.notice.hidden = true;
    this.empty.hidden = false;
  }

  draw() {
    this.frame = 0;
    const until = performance.now() + BUDGET;
    let chunk = this.lines.lastElementChild;
    let room = chunk ? CHUNK - chunk.childElementCount : 0;
    let fragment = document.createDocumentFragment();
    let drawn = 0;
    while (drawn < this.pending.length && (drawn < MIN_LINES || drawn % 20 || performance.now() < until)) {
      const text = this.pending[drawn];
      drawn += 1;
      if (room === 0) {
        if (chunk) chunk.append(fragment);
        chunk = this.lines.appendChild(h("div", { class: "chunk" }));
        fragment = document.createDocumentFragment();
        room = CHUNK;
      }
      this.number += 1;
      const line = document.createElement("div");
      // Narwhal's own lines (a step starts, a job ends) stand out from the steps' output.
      line.className = text.startsWith("--- ") ? "ln mark" : "ln";
      line.dataset.n = String(this.number);
      renderSegments(line, this.parser.segments(text));
      fragment.append(line);
      room -= 1;
    }
    if (chunk) chunk.append(fragment);
    this.pending.splice(0, drawn);
    this.count += drawn;
    this.empty.hidden = this.number > 0;
    this.trim();
    if (this.follow) this.el.scrollTop = this.el.scrollHeight;
    if (this.pending.length) this.frame = requestAnimationFrame(() => this.draw());
  }

  /** Drop the earliest lines beyond the cap: whole chunks, and part of the first one. */
  trim() {
    let excess = this.count - this.maxLines;
    if (excess <= 0) return;
    this.count -= excess;
    this.dropped(excess);
    while (excess > 0) {
      const first = this.lines.firstElementChild;
      const n = first.childElementCount;
      if (n <= excess) {
        first.remove();
        excess -= n;
      } else {
        const range = document.createRange();
        range.setStartBefore(first.firstElementChild);
        range.setEndAfter(first.children[excess - 1]);
        range.deleteContents();
        excess = 0;
      }
    }
  }

  /** Lines not shown any more (or never): counted in the notice. */
  dropped(n) {
    this.hidden += n;
    this.said.textContent = `${this.hidden.toLocaleString()} earlier lines hidden`;
    this.notice.hidden = false;
  }

  /** Lines in the page now. */
  get shown() {
    return this.count;
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.pending = [];
  }
}
