// A job's steps: status, exit code and duration, a bar per step whose width is its
// share of the longest step, and under each step that was measured its CPU and
// memory graph. Kept as a model that feed updates change (step and usage topics).

import { peakText, resourceGraph, share } from "../charts.js";
import { badge, fill, h } from "../dom.js";
import { duration } from "../format.js";

export class Steps {
  constructor() {
    this.attempt = 0;
    this.steps = new Map();
    this.el = h("div", { class: "steps" });
  }

  /** The steps of GET /api/jobs/{id} for `attempt`. */
  load(attempt, steps) {
    this.attempt = attempt;
    this.steps = new Map((steps || []).map((st) => [st.index, { ...st }]));
  }

  /** A StepView from the feed; false when it belongs to another attempt. */
  step(view) {
    if (view.attempt !== this.attempt) return false;
    const old = this.steps.get(view.index) || { index: view.index, usage: null };
    const running = view.status === "running";
    this.steps.set(view.index, {
      ...old,
      name: view.name,
      status: view.status,
      exit_code: view.exit_code,
      duration: view.duration,
      started_at: running ? view.at : old.started_at ?? (view.at - (view.duration || 0)),
    });
    return true;
  }

  /** A UsageView: its samples follow those already held (a repeated sample is skipped). */
  usage(view) {
    if (view.attempt !== this.attempt) return false;
    const st = this.steps.get(view.index) || { index: view.index, name: `step ${view.index + 1}`,
      status: "running", exit_code: null, duration: null, started_at: null };
    const usage = st.usage || { samples: [], peak_memory: 0, peak_cpu: 0, memory_limit: null };
    const lastT = usage.samples.length ? usage.samples[usage.samples.length - 1][0] : -Infinity;
    const added = (view.samples || []).filter((p) => p[0] > lastT);
    const samples = usage.samples.concat(added);
    this.steps.set(view.index, {
      ...st,
      usage: {
        samples,
        memory_limit: view.memory_limit ?? usage.memory_limit,
        peak_memory: Math.max(usage.peak_memory || 0, ...added.map((p) => p[2])),
        peak_cpu: Math.max(usage.peak_cpu || 0, ...added.map((p) => p[1])),
      },
    });
    return true;
  }

  render(now = Date.now() / 1000) {
    const list = [...this.steps.values()].sort((a, b) => a.index - b.index);
    if (!list.length) {
      fill(this.el, h("p", { class: "muted" }, "No step has started yet."));
      return;
    }
    const took = (st) => st.status === "running" && st.started_at ? now - st.started_at
      : st.duration ?? 0;
    const longest = Math.max(0.001, ...list.map(took));
    fill(this.el, list.map((st) => stepRow(st, took(st), longest)));
  }
}

function stepRow(st, took, longest) {
  const exit = st.exit_code === null || st.exit_code === undefined ? "" : `exit ${st.exit_code}`;
  const bar = h("div", { class: `bar bar-${barKind(st.status)}`,
    style: { width: share(took, longest) } });
  return h("div", { class: "step", "data-step": st.index },
    h("div", { class: "step-line" },
      badge(st.status),
      h("span", { class: "step-name" }, st.name ?? ""),
      h("span", { class: "step-exit mono" }, exit),
      h("span", { class: "step-time" }, st.status === "skipped" ? "—" : duration(took)),
      h("div", { class: "bar-track" }, bar)),
    usageOf(st));
}

/** A graph from two samples on; one sample (a step of a moment) says its peak only. */
function usageOf(st) {
  const samples = st.usage && st.usage.samples ? st.usage.samples : [];
  if (samples.length > 1) return resourceGraph(st.usage);
  if (samples.length === 1) return h("div", { class: "usage-line muted" }, peakText(st.usage));
  return null;
}

function barKind(status) {
  if (status === "success") return "ok";
  if (status === "running") return "run";
  if (status === "failed" || status === "error" || status === "timed_out") return "bad";
  return "other";
}
