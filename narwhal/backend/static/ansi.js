// ANSI colours in log lines: SGR sequences (16 and 256 colours, bold, dim, italic,
// underline, inverse, reset) become spans with classes; every other escape sequence
// and control character is dropped. Truecolor is shown as the nearest of the 256.
// The colour state carries from one line to the next, as in a terminal.

// CSI (with its parameters and intermediates), OSC (to BEL or ST), DCS/SOS/PM/APC
// strings, two-character escapes, a lone ESC, and C0 controls other than TAB.
const ESCAPES =
  /\x1b\[([0-9;:?<=>]*)([ -/]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[ -/]*[0-~]?|[\x00-\x08\x0a-\x1f\x7f]/g;

/** Longest line drawn in full; the rest is summarised (the full log link has it all). */
export const MAX_LINE = 10000;

function freshStyle() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false,
    inverse: false };
}

/** 24-bit colour -> the nearest colour of the 6x6x6 cube (16-231). */
function cube(r, g, b) {
  const level = (v) => Math.max(0, Math.min(5, Math.round((Number(v) || 0) / 51)));
  return 16 + 36 * level(r) + 6 * level(g) + level(b);
}

/** An extended colour (38/48): "5;n" or "2;r;g;b"; returns [colour or null, params used]. */
function extended(codes, i) {
  if (codes[i + 1] === 5) {
    const n = codes[i + 2];
    return [Number.isInteger(n) && n >= 0 && n <= 255 ? n : null, 3];
  }
  if (codes[i + 1] === 2) return [cube(codes[i + 2], codes[i + 3], codes[i + 4]), 5];
  return [null, 1];
}

const ATTRS = {
  1: ["bold", true], 2: ["dim", true], 3: ["italic", true], 4: ["underline", true],
  7: ["inverse", true], 22: ["bold", false], 23: ["italic", false], 24: ["underline", false],
  27: ["inverse", false],
};

function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(style, freshStyle());
    else if (c === 22) Object.assign(style, { bold: false, dim: false });
    else if (ATTRS[c]) style[ATTRS[c][0]] = ATTRS[c][1];
    else if (c >= 30 && c <= 37) style.fg = c - 30;
    else if (c >= 90 && c <= 97) style.fg = c - 90 + 8;
    else if (c >= 40 && c <= 47) style.bg = c - 40;
    else if (c >= 100 && c <= 107) style.bg = c - 100 + 8;
    else if (c === 39) style.fg = null;
    else if (c === 49) style.bg = null;
    else if (c === 38 || c === 48) {
      const [colour, used] = extended(codes, i);
      if (colour !== null) style[c === 38 ? "fg" : "bg"] = colour;
      i += used - 1;
    }
  }
}

function classes(style) {
  const out = [];
  if (style.fg !== null) out.push(`f${style.fg}`);
  if (style.bg !== null) out.push(`b${style.bg}`);
  if (style.bold) out.push("ab");
  if (style.dim) out.push("ad");
  if (style.italic) out.push("ai");
  if (style.underline) out.push("au");
  if (style.inverse) out.push("av");
  return out.join(" ");
}

/** Turns lines into segments; one per log view, so colours carry across lines. */
export class AnsiParser {
  constructor() {
    this.style = freshStyle();
  }

  /** One line -> [{text, cls}]. A carriage return rewinds: only what follows the last is shown. */
  segments(line) {
    const parts = String(line).replace(/\r+$/, "").split("\r");
    let shown = [];
    for (const part of parts) {
      const segs = this.parsePart(part);
      if (segs.length) shown = segs;
    }
    return shown;
  }

  parsePart(text) {
    const out = [];
    let last = 0;
    ESCAPES.lastIndex = 0;
    for (let m = ESCAPES.exec(text); m !== null; m = ESCAPES.exec(text)) {
      if (m.index > last) out.push({ text: text.slice(last, m.index), cls: classes(this.style) });
      last = ESCAPES.lastIndex;
      if (m[3] === "m" && m[2] === "" && /^[0-9;:]*$/.test(m[1])) applySgr(this.style, m[1]);
    }
    if (last < text.length) out.push({ text: text.slice(last), cls: classes(this.style) });
    return merge(out);
  }

  reset() {
    this.style = freshStyle();
  }
}

function merge(segs) {
  const out = [];
  for (const seg of segs) {
    const prev = out[out.length - 1];
    if (prev && prev.cls === seg.cls) prev.text += seg.text;
    else out.push({ ...seg });
  }
  return out;
}

/** Append one line's segments to el as text nodes and spans (textContent only). */
export function renderSegments(el, segs) {
  let left = MAX_LINE;
  for (const seg of segs) {
    if (left <= 0) break;
    const text = seg.text.length > left ? seg.text.slice(0, left) : seg.text;
    left -= text.length;
    if (seg.cls) {
      const span = document.createElement("span");
      span.className = seg.cls;
      span.textContent = text;
      el.append(span);
    } else {
      el.append(document.createTextNode(text));
    }
  }
  const total = segs.reduce((n, seg) => n + seg.text.length, 0);
  if (total > MAX_LINE) {
    const more = document.createElement("span");
    more.className = "cut";
    more.textContent = ` … ${total - MAX_LINE} more characters (see the full log)`;
    el.append(more);
  }
}

/** The 256 colours as CSS rules: .fN (text) and .bN (background); 0-15 from the theme. */
export function paletteCss() {
  const rules = [];
  const levels = [0, 95, 135, 175, 215, 255];
  for (let n = 0; n < 256; n++) {
    let colour;
    if (n < 16) colour = `var(--ansi-${n})`;
    else if (n < 232) {
      const i = n - 16;
      const rgb = [Math.floor(i / 36), Math.floor(i / 6) % 6, i % 6].map((k) => levels[k]);
      colour = `rgb(${rgb.join(",")})`;
    } else {
      const g = 8 + 10 * (n - 232);
      colour = `rgb(${g},${g},${g})`;
    }
    rules.push(`.log .f${n}{color:${colour}}`, `.log .b${n}{background-color:${colour}}`);
  }
  return rules.join("\n");
}

/** Add the palette to the document once: a constructed sheet (an inline <style>
 * would need a looser Content-Security-Policy). */
export function installPalette(doc = document) {
  if (doc.narwhalPalette) return;
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(paletteCss());
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  doc.narwhalPalette = sheet;
}
