// Pieces several pages share: the jobs table, a polite message, a section.

import { badge, h, jobPath, link, runnerPath } from "./dom.js";
import { ago, jobDuration, refName, repoName, shortSha } from "./format.js";

/** The matrix values of a job as "PY=3.12 DB=sqlite". */
export function matrixText(matrix) {
  if (!matrix) return "";
  return Object.entries(matrix).map(([k, v]) => `${k}=${v}`).join(" ");
}

/** What a job is, in one short line: its pipeline name or matrix values. */
function jobWhat(job) {
  const parts = [];
  if (job.pipeline) parts.push(job.pipeline);
  const matrix = matrixText(job.matrix);
  if (matrix && !(job.pipeline || "").includes(matrix)) parts.push(matrix);
  return parts.join(" · ");
}

const COLUMNS = {
  id: ["Job", (job) => h("td", { class: "num" }, link(jobPath(job.id), `#${job.id}`))],
  state: ["State", (job) => h("td", {}, badge(job.state))],
  repo: ["Repository", (job) => h("td", { class: "repo", title: job.repo }, repoName(job.repo))],
  ref: ["Branch", (job) => h("td", { class: "ref", title: job.ref }, refName(job.ref))],
  sha: ["Commit", (job) => h("td", { class: "mono" }, shortSha(job.sha))],
  what: ["Pipeline", (job, now, step) => h("td", { class: "what" }, jobWhat(job),
    step && job.state === "running" && step.status === "running"
      ? h("span", { class: "current-step" }, step.name) : null)],
  runner: ["Runner", (job) => h("td", {},
    job.runner_id ? link(runnerPath(job.runner_id), job.runner_id) : "—")],
  created: ["Created", (job, now) => h("td", { class: "when" }, ago(job.created_at, now))],
  took: ["Duration", (job, now) => h("td", { class: "num" }, jobDuration(job, now))],
};
const FULL = Object.keys(COLUMNS);
const COMPACT = ["id", "state", "what", "runner", "took"];
/** The overview's latest jobs: no commit, so the table fits beside the runners. */
const RECENT = ["id", "state", "repo", "ref", "what", "runner", "created", "took"];
/** Matrix siblings: the API gives their id, state, matrix and attempt only. */
const SIBLING = ["id", "state", "what"];

/** One job as a row; step: its current step when known (the overview's live store). */
export function jobRow(job, now, columns = FULL, step = null) {
  const row = h("tr", { "data-job": job.id, class: "job-row" },
    columns.map((c) => COLUMNS[c][1](job, now, step)));
  if (job.reason) row.title = job.reason;
  return row;
}

/** A table of jobs (already one page: never more than the caller's page size). */
export function jobsTable(jobs, { empty = "No jobs.", compact = false, siblings = false,
  recent = false, current = null } = {}) {
  const columns = siblings ? SIBLING : compact ? COMPACT : recent ? RECENT : FULL;
  const now = Date.now() / 1000;
  const body = h("tbody", {},
    jobs.map((job) => jobRow(job, now, columns, current ? current.get(job.id) : null)));
  if (!jobs.length) {
    body.append(h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty)));
  }
  return h("table", { class: "jobs" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, COLUMNS[c][0])))), body);
}

/** A message for people: kind "error" (polite), "info" or "ok". */
export function message(kind, text, ...more) {
  return h("div", { class: `msg msg-${kind}`, role: kind === "error" ? "alert" : "status" },
    text, ...more);
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

/** Calls fn at most once per animation frame however often it is asked to. */
export function throttled(fn) {
  let frame = 0;
  const run = () => {
    frame = 0;
    fn();
  };
  const ask = () => {
    if (!frame) frame = requestAnimationFrame(run);
  };
  ask.cancel = () => {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
  };
  return ask;
}
