// Small SVG pictures: the throughput sparkline, a step's CPU and memory, a runner's
// slots over time. Each is drawn into a fixed viewBox that CSS scales to its box;
// strokes keep their width (vector-effect) whatever the scale.

import { h, s } from "./dom.js";
import { bytes, cores, duration } from "./format.js";

const W = 600;

/** "M x y L x y ..." for points already in the viewBox's units. */
export function pathOf(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`).join(" ");
}

function area(points, height) {
  if (!points.length) return "";
  const first = points[0];
  const last = points[points.length - 1];
  return `${pathOf(points)} L${last[0].toFixed(1)} ${height} L${first[0].toFixed(1)} ${height} Z`;
}

function svg(height, label, ...children) {
  return s("svg", {
    viewBox: `0 0 ${W} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": label, class: "chart",
  }, ...children);
}

/** The last 60 minutes as [[minute start, ended, succeeded], ...], every minute present. */
export function denseMinutes(minutes, now = Date.now() / 1000) {
  const byStart = new Map((minutes || []).map((m) => [Number(m[0]), m]));
  const latest = Math.floor(now / 60) * 60;
  const out = [];
  for (let k = 59; k >= 0; k--) {
    const start = latest - 60 * k;
    const m = byStart.get(start);
    out.push([start, m ? Number(m[1]) || 0 : 0, m ? Number(m[2]) || 0 : 0]);
  }
  return out;
}

/** Jobs ended per minute (area) and failed per minute (line) over the last hour. */
export function sparkline(minutes, now) {
  const H = 80;
  const rows = denseMinutes(minutes, now);
  const top = Math.max(1, ...rows.map((r) => r[1]));
  const x = (i) => (i * W) / (rows.length - 1);
  const y = (v) => H - 2 - (v / top) * (H - 6);
  const ended = rows.map((r, i) => [x(i), y(r[1])]);
  const failed = rows.map((r, i) => [x(i), y(r[1] - r[2])]);
  return svg(H, `jobs per minute, last hour, at most ${top}`,
    s("path", { class: "spark-area", d: area(ended, H) }),
    s("path", { class: "spark-line", d: pathOf(ended), "data-points": ended.length }),
    s("path", { class: "spark-fail", d: pathOf(failed) }));
}

/** Peak and limit in words: "peak 312 MiB of 2 GiB" (or "peak 312 MiB" with no limit). */
export function peakText(usage) {
  const peak = usage.peak_memory ?? Math.max(0, ...usage.samples.map((p) => p[2]));
  const limit = usage.memory_limit ? ` of ${bytes(usage.memory_limit)}` : "";
  return `peak ${bytes(peak)}${limit}`;
}

/** A step's samples [[seconds, cpu cores, memory bytes], ...] as two lines. */
export function resourceGraph(usage) {
  const H = 120;
  const samples = usage.samples || [];
  const tMax = Math.max(1, ...samples.map((p) => p[0]));
  const memPeak = Math.max(1, usage.peak_memory || 0, ...samples.map((p) => p[2]));
  const cpuPeak = Math.max(0.05, usage.peak_cpu || 0, ...samples.map((p) => p[1]));
  const memTop = memPeak * 1.15;
  const cpuTop = cpuPeak * 1.15;
  const x = (t) => (t / tMax) * W;
  const mem = samples.map((p) => [x(p[0]), H - (p[2] / memTop) * H]);
  const cpu = samples.map((p) => [x(p[0]), H - (p[1] / cpuTop) * H]);
  const parts = [
    s("path", { class: "mem-area", d: area(mem, H) }),
    s("path", { class: "mem", d: pathOf(mem), "data-points": samples.length }),
    s("path", { class: "cpu", d: pathOf(cpu), "data-points": samples.length }),
  ];
  const limit = usage.memory_limit;
  if (limit && limit <= memTop) {
    const ly = H - (limit / memTop) * H;
    parts.unshift(s("line", { class: "limit", x1: 0, x2: W, y1: ly, y2: ly }));
  }
  return h("figure", { class: "usage" },
    svg(H, "memory and CPU over the step", ...parts),
    h("figcaption", {},
      h("span", { class: "key mem-key" }, peakText(usage)),
      h("span", { class: "key cpu-key" }, `CPU peak ${cores(cpuPeak)}`),
      h("span", { class: "key" }, `over ${duration(tMax)}`)));
}

/** A runner's [[t, busy, capacity], ...]: busy slots (area) under its capacity (line). */
export function slotsGraph(history) {
  const H = 120;
  const rows = history || [];
  if (!rows.length) return h("p", { class: "muted" }, "No history yet.");
  const t0 = rows[0][0];
  const span = Math.max(1, rows[rows.length - 1][0] - t0);
  const top = Math.max(1, ...rows.map((r) => r[2]));
  const x = (t) => ((t - t0) / span) * W;
  const y = (v) => H - 2 - (v / top) * (H - 6);
  const stepped = (k) => rows.flatMap((r, i) => {
    const next = i + 1 < rows.length ? rows[i + 1][0] : r[0];
    return [[x(r[0]), y(r[k])], [x(next), y(r[k])]];
  });
  const busy = stepped(1);
  return h("figure", { class: "usage" },
    svg(H, "busy slots and capacity over the last hour",
      s("path", { class: "busy-area", d: area(busy, H) }),
      s("path", { class: "busy", d: pathOf(busy), "data-points": rows.length }),
      s("path", { class: "capacity", d: pathOf(stepped(2)) })),
    h("figcaption", {},
      h("span", { class: "key busy-key" }, "busy slots"),
      h("span", { class: "key capacity-key" }, `capacity (max ${top})`),
      h("span", { class: "key" }, `over ${duration(span)}`)));
}

/** One bar: the part of width given to `value` out of `whole`, as a CSS width. */
export function share(value, whole) {
  if (!whole || !Number.isFinite(value)) return "0%";
  return `${Math.max(0.5, Math.min(100, (100 * value) / whole)).toFixed(2)}%`;
}

/** A runner's slots: used (busy) and free as a bar with its numbers. */
export function slotsBar(capacity, free) {
  const used = Math.max(0, capacity - free);
  const bar = h("div", { class: "slots", title: `${used} of ${capacity} slots used` });
  for (let i = 0; i < capacity && i < 64; i++) {
    bar.append(h("span", { class: i < used ? "slot used" : "slot free" }));
  }
  return h("div", { class: "slots-box" }, bar,
    h("span", { class: "slots-text" }, `${used} used · ${Math.max(0, free)} free`));
}
