// The jobs list: filters (state, repository, branch) kept in the address, pages of
// 50 from GET /api/jobs (older pages by `before`), rows updated live from the feed
// and new jobs added at the top of the first page.

import { api } from "../api.js";
import { jobRow, jobsTable, message } from "../components.js";
import { fill, h } from "../dom.js";

const PAGE = 50;
const STATES = ["queued", "assigned", "running", "success", "failed", "error", "cancelled",
  "timed_out", "skipped"];

export function mount(ctx, route) {
  const q = route.query;
  const filters = { state: q.get("state") || "", repo: q.get("repo") || "",
    branch: q.get("branch") || "" };
  const before = q.get("before") || "";
  const page = { jobs: [], next: null, filters, before };
  const status = h("div", { class: "status-line" });
  const table = h("div", { class: "table-box" }, h("p", { class: "muted" }, "Loading…"));
  const pager = h("nav", { class: "pager" });
  fill(ctx.root, h("div", { class: "jobs-page" },
    h("h1", {}, "Jobs"), filterForm(ctx, filters), status, table, pager));
  document.title = "Narwhal — jobs";

  let alive = true;
  api.jobs({ ...filters, before, limit: PAGE }).then((answer) => {
    if (!alive) return;
    page.jobs = answer.jobs || [];
    page.next = answer.next ?? null;
    fill(table, jobsTable(page.jobs, { empty: "No job matches." }));
    fill(pager, pagerLinks(filters, before, page.next));
  }).catch((err) => {
    if (!alive) return;
    if (err.signIn) ctx.signIn();
    else fill(table, message("error", err.message));
  });

  const unlisten = ctx.store.listen((topic, items) => {
    if (topic === "job" && page.jobs.length !== undefined) live(table, page, items);
  });
  return {
    destroy() {
      alive = false;
      unlisten();
    },
  };
}

function filterForm(ctx, filters) {
  const state = h("select", { name: "state", "aria-label": "state" },
    h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s.replace("_", " "))));
  const repo = h("input", { name: "repo", placeholder: "repository", value: filters.repo,
    "aria-label": "repository" });
  const branch = h("input", { name: "branch", placeholder: "branch", value: filters.branch,
    "aria-label": "branch" });
  const form = h("form", { class: "filters" }, state, repo, branch,
    h("button", { type: "submit" }, "Filter"),
    h("a", { href: "/jobs", class: "button subtle" }, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.router.go(jobsUrl({ state: state.value, repo: repo.value.trim(),
      branch: branch.value.trim() }));
  });
  state.addEventListener("change", () => form.requestSubmit());
  return form;
}

function jobsUrl(params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) query.set(k, String(v));
  const qs = query.toString();
  return qs ? `/jobs?${qs}` : "/jobs";
}

function pagerLinks(filters, before, next) {
  return [
    before ? h("a", { href: jobsUrl(filters), class: "button" }, "← Newest") : null,
    next ? h("a", { href: jobsUrl({ ...filters, before: next }), class: "button" }, "Older →")
      : null,
  ];
}

/** Whether a job from the feed belongs on this list (the server filters the same way). */
function matches(job, filters) {
  if (filters.state && job.state !== filters.state) return false;
  if (filters.repo && job.repo !== filters.repo) return false;
  if (filters.branch && job.ref !== filters.branch && job.ref !== `refs/heads/${filters.branch}`) {
    return false;
  }
  return true;
}

function live(table, page, items) {
  const body = table.querySelector("tbody");
  if (!body) return;
  const now = Date.now() / 1000;
  const newest = page.jobs.length ? page.jobs[0].id : 0;
  for (const job of items) {
    const i = page.jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) {
      page.jobs[i] = job;
      const row = body.querySelector(`tr[data-job="${Number(job.id)}"]`);
      if (row) row.replaceWith(jobRow(job, now));
    } else if (!page.before && job.id > newest && matches(job, page.filters)) {
      if (!page.jobs.length) body.replaceChildren();
      page.jobs.unshift(job);
      body.prepend(jobRow(job, now));
      if (page.jobs.length > PAGE) {
        page.jobs.pop();
        body.lastElementChild.remove();
      }
    }
  }
}
