// Building the page with DOM calls only. Every piece of data becomes a text
// node (repository names, branches, log lines and reasons come from people
// who may be hostile), so no string is ever parsed as HTML anywhere.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Apply attrs to el: "class", "on*" handlers, "style" (an object), the rest as attributes. */
function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, String(v));
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("div", {class: "x"}, "text", otherNode): an element; strings become text nodes. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Replace every child of el with children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A link inside the single page (the router picks up clicks on it). */
export function link(path, ...children) {
  return h("a", { href: path }, ...children);
}

export function jobPath(id) {
  return `/jobs/${Number(id)}`;
}

export function runnerPath(id) {
  return `/runners/${encodeURIComponent(String(id))}`;
}

/** A state badge: the class is picked from a fixed list, never from the data. */
const STATE_CLASSES = new Set([
  "queued", "assigned", "running", "success", "failed", "error", "cancelled",
  "timed_out", "skipped", "ready", "busy", "gone", "connecting", "lost", "draining",
  "pending",
]);

export function badge(state) {
  const known = STATE_CLASSES.has(state) ? state : "other";
  return h("span", { class: `badge st-${known}` }, String(state).replace("_", " "));
}
