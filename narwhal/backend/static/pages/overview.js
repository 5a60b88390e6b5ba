// The overview, for a screen on the wall: runners, the queue and its oldest job,
// throughput and success rate over the last hour, the latest jobs. All of it from
// the live store, redrawn at most once per frame as the feed speaks.

import { denseMinutes, slotsBar, sparkline } from "../charts.js";
import { jobsTable, section, throttled } from "../components.js";
import { badge, fill, h, jobPath, link, runnerPath } from "../dom.js";
import { ago, duration, percent, refName, repoName } from "../format.js";

const RECENT = 15;

export function mount(ctx) {
  const root = h("div", { class: "overview" });
  fill(ctx.root, root);
  const draw = throttled(() => render(root, ctx.store));
  const unlisten = ctx.store.listen(draw);
  const tick = setInterval(draw, 5000); // "waiting for 3 min" keeps counting
  draw();
  document.title = "Narwhal — overview";
  return {
    destroy() {
      unlisten();
      clearInterval(tick);
      draw.cancel();
    },
  };
}

function render(root, store) {
  if (!store.loaded) {
    fill(root, h("p", { class: "muted" }, "Waiting for the feed…"));
    return;
  }
  const now = Date.now() / 1000;
  fill(root,
    h("div", { class: "tiles" }, tiles(store, now)),
    oldest(store.queue, now),
    h("div", { class: "overview-grid" },
      section("Runners", runners(store.runnerList())),
      section("Recent jobs", h("div", { class: "table-box" },
        jobsTable(store.recentJobs(RECENT), { empty: "No jobs yet.",
          recent: true, current: store.current })),
      h("p", { class: "more" }, link("/jobs", "All jobs →")))));
}

function tile(label, value, detail, cls = "") {
  return h("div", { class: `tile ${cls}` },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value" }, value),
    h("div", { class: "tile-detail" }, detail));
}

function tiles(store, now) {
  const rows = denseMinutes(store.stats.minutes, now);
  const last10 = rows.slice(-10);
  const perMinute = last10.reduce((n, r) => n + r[1], 0) / last10.length;
  const ended = rows.reduce((n, r) => n + r[1], 0);
  const succeeded = rows.reduce((n, r) => n + r[2], 0);
  const q = store.queue;
  return [
    tile("Queued", String(q.queued ?? 0), "waiting for a runner", q.queued ? "warn" : ""),
    tile("Running", String(q.active ?? 0), `${freeSlots(store)} slots free`),
    tile("Jobs / min", perMinute.toFixed(perMinute < 10 ? 1 : 0), "last 10 minutes"),
    tile("Success rate", percent(succeeded, ended), `${ended} jobs in the last hour`,
      ended && succeeded / ended < 0.8 ? "bad" : ""),
    h("div", { class: "tile spark" },
      h("div", { class: "tile-label" }, "Throughput, last hour"),
      sparkline(store.stats.minutes, now),
      h("div", { class: "tile-detail" },
        h("span", { class: "key spark-key" }, "ended"),
        h("span", { class: "key fail-key" }, "failed"))),
  ];
}

function freeSlots(store) {
  let free = 0;
  for (const r of store.runnerList()) if (r.state === "ready") free += Math.max(0, r.free);
  return free;
}

function oldest(queue, now) {
  const job = queue.oldest;
  if (!job) return h("div", { class: "oldest none" }, "Nothing is waiting.");
  return h("div", { class: "oldest" },
    h("span", { class: "oldest-label" }, "Oldest waiting"),
    link(jobPath(job.id), `#${job.id}`),
    h("span", { class: "repo" }, repoName(job.repo)),
    h("span", { class: "ref" }, refName(job.ref)),
    h("span", { class: "waited" },
      now - job.created_at < 1 ? "just queued" : `for ${duration(now - job.created_at)}`),
    h("span", { class: "reason" }, job.reason || "waiting"));
}

function runners(list) {
  if (!list.length) return h("p", { class: "muted" }, "No runner is connected.");
  return h("div", { class: "runners" }, list.map(runnerCard));
}

function runnerCard(r) {
  const used = Math.max(0, r.capacity - r.free);
  const load = r.capacity ? used / r.capacity : 0;
  const name = r.id ?? r.endpoint;
  return h("article", { class: `runner st-card-${r.state === "ready" ? "ready" : "other"}` },
    h("header", {},
      r.id ? link(runnerPath(r.id), name) : h("span", {}, name),
      badge(r.state)),
    slotsBar(r.capacity, r.free),
    h("div", { class: "load" }, `load ${Math.round(load * 100)}%`,
      r.last_seen ? h("span", { class: "muted" }, ` · seen ${ago(r.last_seen)}`) : null),
    h("div", { class: "labels" },
      Object.entries(r.labels || {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
    r.jobs && r.jobs.length
      ? h("div", { class: "held" }, "running ", r.jobs.map((id) => link(jobPath(id), `#${id}`)))
      : null,
    r.reason ? h("div", { class: "muted" }, r.reason) : null);
}
