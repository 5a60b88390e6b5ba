// The present as the feed tells it: runners, live and recent jobs, the queue and
// the counters. A "state" message replaces it; "update" messages change it. Pages
// read it and are told what changed (topic and items).

/** Ended jobs kept beyond the active and queued ones: the store stays small with 10,000 jobs. */
const KEEP_ENDED = 200;
const ENDED = new Set(["success", "failed", "error", "cancelled", "timed_out", "skipped"]);

export function isEnded(state) {
  return ENDED.has(state);
}

export class Store {
  constructor() {
    this.runners = new Map();
    this.jobs = new Map();
    this.queue = { queued: 0, active: 0, oldest: null };
    this.stats = { started_at: 0, jobs_total: {}, minutes: [] };
    this.feed = { connected: false };
    /** Job id -> its current step (the feed's StepView), for live jobs. */
    this.current = new Map();
    this.listeners = new Set();
    this.loaded = false;
  }

  /** listener(topic, items): topic "state" after a full replacement. Returns an unsubscribe. */
  listen(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(topic, items) {
    for (const listener of [...this.listeners]) listener(topic, items);
  }

  replace(state) {
    this.runners = new Map((state.runners || []).map((r) => [runnerKey(r), r]));
    this.jobs = new Map((state.jobs || []).map((j) => [j.id, j]));
    this.queue = state.queue || this.queue;
    this.stats = state.stats || this.stats;
    this.feed = state.feed || this.feed;
    this.current = new Map((state.steps || []).map((st) => [st.job_id, st]));
    this.loaded = true;
    this.emit("state", []);
  }

  update(topic, items) {
    if (!Array.isArray(items)) return;
    if (topic === "job") {
      for (const job of items) this.jobs.set(job.id, job);
      this.prune();
    } else if (topic === "step") {
      for (const step of items) this.current.set(step.job_id, step);
    } else if (topic === "runner") {
      for (const runner of items) this.runners.set(runnerKey(runner), runner);
    } else if (topic === "queue" && items.length) {
      this.queue = items[items.length - 1];
    } else if (topic === "stats" && items.length) {
      this.stats = items[items.length - 1];
    }
    this.emit(topic, items);
  }

  prune() {
    const ended = [...this.jobs.values()].filter((j) => isEnded(j.state));
    if (ended.length <= KEEP_ENDED) return;
    ended.sort((a, b) => b.id - a.id);
    for (const job of ended.slice(KEEP_ENDED)) {
      this.jobs.delete(job.id);
      this.current.delete(job.id);
    }
  }

  /** Runners still there, ready ones first, then by id. */
  runnerList() {
    return [...this.runners.values()]
      .filter((r) => r.state !== "gone")
      .sort((a, b) => (a.state === "ready" ? 0 : 1) - (b.state === "ready" ? 0 : 1) ||
        String(a.id ?? a.endpoint).localeCompare(String(b.id ?? b.endpoint)));
  }

  /** Jobs newest first. */
  recentJobs(limit) {
    return [...this.jobs.values()].sort((a, b) => b.id - a.id).slice(0, limit);
  }
}

/** A runner is known by its id once it said it, by its endpoint before. */
function runnerKey(runner) {
  return runner.endpoint || runner.id;
}
