// One job: what it builds, its state and actions (cancel, resubmit), why it waits
// while queued, why it went to its runner and what its checkout cost, its steps and
// their resources, the live log, its attempts and transitions, its matrix siblings.
// GET /api/jobs/{id} gives the start; the feed's job, step and usage updates and
// the followed log keep it current. The feed does not carry a job's pending
// explanation, placement or checkout time: the job is read again when its state or
// checkout changes, and every few seconds while it is queued (one read at a time).

import { api, logPath } from "../api.js";
import { jobsTable, message, section, throttled } from "../components.js";
import { badge, fill, h, link, runnerPath } from "../dom.js";
import { bytes, clock, duration, jobDuration, refName } from "../format.js";
import { LogView } from "../logview.js";
import { isEnded } from "../store.js";
import { Steps } from "./steps.js";

/** Milliseconds between two reads of a queued job's explanation. */
const PENDING_POLL = 3000;
/** What only the REST job says (the feed's job view has none of them). */
const REST_FIELDS = ["pending", "placement", "checkout", "cold", "priority", "cpus", "memory"];

export function mount(ctx, route) {
  const id = Number(route.params[0]);
  const page = new JobPage(ctx, id);
  page.start();
  return page;
}

class JobPage {
  constructor(ctx, id) {
    this.ctx = ctx;
    this.id = id;
    this.job = null;
    this.transitions = [];
    this.siblings = [];
    this.steps = new Steps();
    this.log = new LogView({ fullLogHref: logPath(id) });
    this.head = h("div", { class: "job-head card" }, h("p", { class: "muted" }, "Loading…"));
    this.notice = h("div", { class: "notices" });
    this.pending = h("div", { class: "pending card", role: "status", hidden: true });
    this.poll = 0;
    this.refreshing = false;
    this.history = h("div", { class: "history" });
    this.family = h("div", { class: "siblings" });
    this.drawSteps = throttled(() => this.steps.render());
    this.drawHead = throttled(() => this.renderHead());
    this.cancel = this.button("Cancel", "cancel", () => api.cancel(this.id));
    this.resubmit = this.button("Resubmit", "resubmit", () => api.resubmit(this.id));
    this.actions = h("div", { class: "actions" }, this.cancel, this.resubmit);
    this.alive = true;
    fill(ctx.root, h("div", { class: "job-page" },
      this.head, this.pending, this.notice,
      h("div", { class: "job-grid" },
        h("div", { class: "job-side" },
          section("Steps", this.steps.el),
          section("Attempts", this.history),
          section("Matrix", this.family)),
        h("section", { class: "card log-card" },
          h("h2", {}, "Log", h("a", { href: logPath(id), class: "small", target: "_blank",
            rel: "noopener" }, "full log")),
          this.log.el))));
    document.title = `Narwhal — job #${id}`;
  }

  start() {
    this.unlisten = this.ctx.store.listen((topic, items) => this.update(topic, items));
    this.unlog = this.ctx.onLog((msg) => {
      if (msg.job_id === this.id) this.log.add(msg.lines || [], Boolean(msg.reset));
    });
    this.ctx.feed.follow(this.id);
    this.tick = setInterval(() => {
      if (this.job && !isEnded(this.job.state)) {
        this.drawSteps();
        this.drawHead();
      }
    }, 1000);
    this.load();
  }

  async load() {
    try {
      const job = await api.job(this.id);
      if (!this.alive) return;
      this.job = job;
      this.transitions = job.transitions || [];
      this.siblings = job.siblings || [];
      this.steps.load(job.attempt, job.steps);
      this.render();
      this.watchQueue();
    } catch (err) {
      if (!this.alive) return;
      if (err.signIn) this.ctx.signIn();
      else fill(this.head, message("error", err.message));
    }
  }

  render() {
    this.renderHead();
    this.renderPending();
    this.steps.render();
    this.renderHistory();
    this.renderSiblings();
  }

  update(topic, items) {
    if (!this.job) return;
    if (topic === "job") this.jobs(items);
    else if (topic === "step") {
      if (items.some((v) => v.job_id === this.id && this.steps.step(v))) this.drawSteps();
    } else if (topic === "usage") {
      if (items.some((v) => v.job_id === this.id && this.steps.usage(v))) this.drawSteps();
    }
  }

  jobs(items) {
    for (const job of items) {
      if (job.id === this.id) this.changed(job);
      else if (this.isSibling(job)) this.sibling(job);
    }
  }

  changed(job) {
    const before = this.job;
    this.job = { ...before, ...job };
    if (job.attempt !== before.attempt) {
      this.load(); // a new attempt: its steps start over (the log resets by itself)
      return;
    }
    if (job.state !== before.state) {
      this.transitions.push({ attempt: job.attempt, state: job.state, reason: job.reason,
        runner_id: job.runner_id, at: job.updated_at });
      this.renderHistory();
    }
    if (job.state !== before.state || job.pipeline !== before.pipeline) this.refresh();
    this.watchQueue();
    this.drawHead();
    this.renderPending();
  }

  /** Poll the job's explanation while it is queued, and only then. */
  watchQueue() {
    const queued = Boolean(this.alive && this.job && this.job.state === "queued");
    if (queued && !this.poll) this.poll = setInterval(() => this.refresh(), PENDING_POLL);
    if (!queued && this.poll) {
      clearInterval(this.poll);
      this.poll = 0;
    }
  }

  /** Read the job again for what only the REST job says; its state too if newer. */
  async refresh() {
    if (this.refreshing || !this.alive || !this.job) return;
    this.refreshing = true;
    try {
      const job = await api.job(this.id);
      if (!this.alive || !this.job || job.attempt !== this.job.attempt) return;
      for (const key of REST_FIELDS) this.job[key] = job[key];
      if ((job.updated_at || 0) > (this.job.updated_at || 0)) {
        for (const key of ["state", "reason", "runner_id", "updated_at"]) this.job[key] = job[key];
      }
      this.renderHead();
      this.renderPending();
      this.watchQueue();
    } catch (err) {
      if (err.signIn && this.alive) this.ctx.signIn();
      // otherwise: the next poll or the next change of the job reads it again
    } finally {
      this.refreshing = false;
    }
  }

  /** Why a queued job waits: the scheduler's words, its place in the queue, its expected start. */
  renderPending() {
    const j = this.job;
    const p = j && j.state === "queued" ? j.pending : null;
    this.pending.hidden = !p;
    if (!p) {
      this.pending.replaceChildren();
      return;
    }
    const where = [];
    if (Number.isFinite(p.position)) where.push(`#${p.position} in the queue`);
    where.push(Number.isFinite(p.eta) ? `expected to start in ~${duration(p.eta)}`
      : "start time not known yet");
    fill(this.pending,
      h("div", { class: "pending-text" }, String(p.text || p.reason || "")),
      h("div", { class: "pending-where muted" }, where.join(" · ")));
  }

  isSibling(job) {
    const root = this.job.parent_id ?? this.job.id;
    return job.parent_id === root || job.id === root;
  }

  sibling(job) {
    const i = this.siblings.findIndex((j) => j.id === job.id);
    if (i >= 0) this.siblings[i] = job;
    else this.siblings.push(job);
    this.renderSiblings();
  }

  renderHead() {
    const j = this.job;
    if (!j) return;
    const ended = isEnded(j.state);
    this.cancel.hidden = ended;
    fill(this.head,
      h("div", { class: "job-title" },
        h("h1", {}, `#${j.id}`), badge(j.state),
        h("span", { class: "job-pipeline" }, j.pipeline || ""),
        this.actions),
      h("dl", { class: "facts" },
        fact("Repository", j.repo),
        fact("Branch", refName(j.ref)),
        fact("Commit", j.sha || "—", "mono"),
        fact("Event", j.event),
        fact("Runner", j.runner_id ? link(runnerPath(j.runner_id), j.runner_id) : "—"),
        fact("Attempt", String(j.attempt)),
        fact("Created", clock(j.created_at)),
        fact("Duration", jobDuration(j)),
        j.priority ? fact("Priority", String(j.priority)) : null,
        resources(j) ? fact("Resources", resources(j)) : null,
        Number.isFinite(j.checkout) ? fact("Checkout", checkoutText(j), "checkout") : null,
        j.placement ? fact("Placement", j.placement, "reason placement") : null,
        fact("Reason", j.reason || "—", "reason"),
        j.cancel_requested && !ended ? fact("Cancel", "requested") : null));
  }

  button(label, kind, action) {
    const b = h("button", { type: "button", class: `action action-${kind}` }, label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        const answer = await action();
        this.said(kind, answer);
      } catch (err) {
        this.refused(err);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  }

  said(kind, answer) {
    if (kind === "cancel") {
      fill(this.notice, message("ok", "Cancel requested."));
    } else if (answer && answer.id) {
      fill(this.notice, message("ok", "Resubmitted as ", link(`/jobs/${Number(answer.id)}`,
        `#${Number(answer.id)}`), "."));
    }
  }

  /** The server's polite refusal, or a sign-in prompt when there is no session. */
  refused(err) {
    if (err.signIn) {
      const signIn = h("button", { type: "button", class: "subtle" }, "Sign in");
      signIn.addEventListener("click", () => this.ctx.signIn());
      fill(this.notice, message("error", "Sign in with a token that may change jobs. ", signIn));
    } else {
      fill(this.notice, message("error", err.message));
    }
  }

  renderHistory() {
    const rows = this.transitions.map((t) => h("tr", {},
      h("td", { class: "num" }, String(t.attempt)),
      h("td", {}, badge(t.state)),
      h("td", { class: "when" }, clock(t.at)),
      h("td", {}, t.runner_id ? link(runnerPath(t.runner_id), t.runner_id) : "—"),
      h("td", { class: "reason" }, t.reason || "")));
    fill(this.history, rows.length
      ? h("table", { class: "transitions" },
        h("thead", {}, h("tr", {}, ["#", "State", "At", "Runner", "Reason"].map((x) => h("th", {}, x)))),
        h("tbody", {}, rows))
      : h("p", { class: "muted" }, "No transition yet."));
  }

  renderSiblings() {
    const others = this.siblings.filter((j) => j.id !== this.id).sort((a, b) => a.id - b.id);
    fill(this.family, others.length ? jobsTable(others, { siblings: true })
      : h("p", { class: "muted" }, "Not part of a matrix."));
  }

  destroy() {
    this.alive = false;
    this.watchQueue();
    this.unlisten();
    this.unlog();
    clearInterval(this.tick);
    this.drawSteps.cancel();
    this.drawHead.cancel();
    this.log.destroy();
    this.ctx.feed.follow(null);
  }
}

/** What the job asks of a runner: "2 CPUs, 4 GiB"; "" for nothing. */
function resources(job) {
  const asked = [];
  if (Number.isFinite(job.cpus)) asked.push(`${job.cpus} CPUs`);
  if (Number.isFinite(job.memory)) asked.push(bytes(job.memory));
  return asked.join(", ");
}

/** "4.5 s, cold (cloned)" or "0.3 s, warm (from the runner's mirror)". */
function checkoutText(job) {
  const how = job.cold ? "cold (cloned)" : "warm (from the runner's mirror)";
  return `${duration(job.checkout)}, ${how}`;
}

function fact(name, value, cls = "") {
  return h("div", { class: `fact ${cls}` }, h("dt", {}, name), h("dd", {}, value));
}
