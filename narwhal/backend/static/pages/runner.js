// One runner: its state, slots and labels (live from the feed), what it reports of
// itself (CPUs and load, memory, disk, platform, Docker, images, the repositories warm
// in its mirror cache) and its quarantine, its slots over the last hour and its recent
// jobs (GET /api/runners/{id}, read again every 10 s, the period the backend samples
// its history at). A report is the runner's own claim: every word of it is text.

import { api } from "../api.js";
import { slotsBar, slotsGraph } from "../charts.js";
import { jobsTable, message, section, throttled } from "../components.js";
import { badge, fill, h, jobPath, link } from "../dom.js";
import { ago, bytes, repoName, shortSha } from "../format.js";

const REFRESH = 10000;
/** Images listed by name at most; the rest are counted. */
const IMAGES_SHOWN = 12;

export function mount(ctx, route) {
  const id = route.params[0];
  const head = h("div", { class: "card runner-head" }, h("p", { class: "muted" }, "Loading…"));
  const graph = h("div", {});
  const jobs = h("div", {});
  const state = h("div", { class: "runner-state" }, h("p", { class: "muted" }, "Loading…"));
  fill(ctx.root, h("div", { class: "runner-page" }, head,
    section("Reported state", state), section("Busy slots, last hour", graph),
    section("Jobs", jobs)));
  document.title = `Narwhal — runner ${id}`;
  let view = null;
  let alive = true;

  const drawHead = throttled(() => renderHead(head, live(ctx.store, id) || view, id));
  const load = async () => {
    try {
      const answer = await api.runner(id);
      if (!alive) return;
      view = answer.runner; // null while the runner is not connected
      fill(state, quarantined(answer.quarantine), report(answer.report));
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

/** Why the dispatcher gives it no work now, if it does not. */
function quarantined(q) {
  if (!q || typeof q !== "object") return null;
  const what = q.probing ? "On probation: its next job is a probe. " : "Quarantined: no work for now. ";
  return h("div", { class: "msg msg-error quarantine", role: "status" },
    what, h("span", { class: "reason" }, String(q.reason || "")));
}

function report(r) {
  if (!r || typeof r !== "object") {
    return h("p", { class: "muted" }, "This runner reports nothing of itself (yet).");
  }
  const images = Array.isArray(r.images) ? r.images : [];
  const mirrors = Array.isArray(r.mirrors) ? r.mirrors : [];
  const limit = Number(r.mirror_limit) > 0 ? bytes(r.mirror_limit) : "no bound";
  return [
    h("dl", { class: "facts" },
      fact("CPUs", String(Number(r.cpus))),
      fact("Load average", Number.isFinite(r.load) ? r.load.toFixed(2) : "—", "load-average"),
      fact("Memory", `${bytes(r.memory_available)} free of ${bytes(r.memory_total)}`, "memory"),
      fact("Disk", `${bytes(r.disk_free)} free`, "disk"),
      fact("Platform", `${String(r.os)}/${String(r.arch)}`, "platform"),
      fact("Docker", r.docker ? "answers" : "no", "docker"),
      fact("Mirror cache", `${bytes(r.mirror_bytes)} of ${limit}`, "cache"),
      fact("Images", images.length
        ? [images.slice(0, IMAGES_SHOWN).map((i) => h("span", { class: "label" }, String(i))),
          images.length > IMAGES_SHOWN ? `+${images.length - IMAGES_SHOWN} more` : null]
        : "none", "images")),
    h("h3", {}, `Warm repositories (${mirrors.length})`),
    mirrors.length ? warmTable(mirrors) : h("p", { class: "muted" }, "None."),
  ];
}

function warmTable(mirrors) {
  return h("div", { class: "table-box" }, h("table", { class: "warm" },
    h("thead", {}, h("tr", {}, ["Repository", "Commit", "Size", "Used"].map((x) => h("th", {}, x)))),
    h("tbody", {}, mirrors.map((m) => h("tr", {},
      h("td", { class: "repo", title: String(m.repo) }, repoName(String(m.repo))),
      h("td", { class: "mono" }, shortSha(m.sha) || "—"),
      h("td", { class: "num" }, bytes(m.size)),
      h("td", { class: "when" }, ago(m.used_at)))))));
}

function fact(name, value, cls = "") {
  return h("div", { class: `fact ${cls}` }, h("dt", {}, name), h("dd", {}, value));
}
