// One runner: its state, slots and labels (live from the feed), its slots over the
// last hour and its recent jobs (GET /api/runners/{id}, read again every 10 s, the
// period the backend samples its history at).

import { api } from "../api.js";
import { slotsBar, slotsGraph } from "../charts.js";
import { jobsTable, message, section, throttled } from "../components.js";
import { badge, fill, h, jobPath, link } from "../dom.js";
import { ago } from "../format.js";

const REFRESH = 10000;

export function mount(ctx, route) {
  const id = route.params[0];
  const head = h("div", { class: "card runner-head" }, h("p", { class: "muted" }, "Loading…"));
  const graph = h("div", {});
  const jobs = h("div", {});
  fill(ctx.root, h("div", { class: "runner-page" }, head,
    section("Busy slots, last hour", graph), section("Jobs", jobs)));
  document.title = `Narwhal — runner ${id}`;
  let view = null;
  let alive = true;

  const drawHead = throttled(() => renderHead(head, live(ctx.store, id) || view, id));
  const load = async () => {
    try {
      const answer = await api.runner(id);
      if (!alive) return;
      view = answer.runner; // null while the runner is not connected
      fill(graph, slotsGraph(answer.history || []));
      fill(jobs, jobsTable(recentJobs(answer), { empty: "No job ran here yet." }));
      drawHead();
    } catch (err) {
      if (!alive) return;
      if (err.signIn) ctx.signIn();
      else fill(head, message("error", err.message));
    }
  };
  const unlisten = ctx.store.listen((topic) => {
    if (topic === "runner" || topic === "state") drawHead();
  });
  const timer = setInterval(load, REFRESH);
  load();
  return {
    destroy() {
      alive = false;
      unlisten();
      clearInterval(timer);
      drawHead.cancel();
    },
  };
}

/** The runner as the feed last told it, when the feed knows it. */
function live(store, id) {
  for (const r of store.runners.values()) if (r.id === id) return r;
  return null;
}

/** The recent jobs of the answer: a list of job maps (the runner's own `jobs` are ids). */
function recentJobs(answer) {
  for (const key of ["recent", "recent_jobs", "jobs"]) {
    const list = answer[key];
    if (Array.isArray(list) && list.length && typeof list[0] === "object") return list;
  }
  return [];
}

function renderHead(el, r, id) {
  if (!r) {
    fill(el, h("h1", {}, `Runner ${id}`), h("p", { class: "muted" }, "Not connected now."));
    return;
  }
  const used = Math.max(0, r.capacity - r.free);
  fill(el,
    h("div", { class: "job-title" }, h("h1", {}, `Runner ${r.id ?? id}`), badge(r.state)),
    slotsBar(r.capacity, r.free),
    h("dl", { class: "facts" },
      fact("Endpoint", r.endpoint, "mono"),
      fact("Found by", r.source),
      fact("Version", r.version || "—"),
      fact("Load", `${used} of ${r.capacity} slots`),
      fact("Last seen", ago(r.last_seen)),
      fact("Labels", Object.entries(r.labels || {}).map(([k, v]) =>
        h("span", { class: "label" }, `${k}=${v}`))),
      fact("Running", (r.jobs || []).length
        ? (r.jobs || []).map((j) => link(jobPath(typeof j === "object" ? j.id : j),
          `#${typeof j === "object" ? j.id : j}`))
        : "—"),
      r.reason ? fact("Reason", r.reason) : null));
}

function fact(name, value, cls = "") {
  return h("div", { class: `fact ${cls}` }, h("dt", {}, name), h("dd", {}, value));
}
