// The dashboard's entry point: signs in from a `#token=` link, loads the present
// (GET /api/state), keeps it live from the websocket, and shows the page the
// address names. Pages get a small context: the store, the feed, the router,
// where to draw, and how to ask for a sign-in.

import { api } from "./api.js";
import { message } from "./components.js";
import { fill, h } from "./dom.js";
import * as jobPage from "./pages/job.js";
import * as jobsPage from "./pages/jobs.js";
import * as overviewPage from "./pages/overview.js";
import * as runnerPage from "./pages/runner.js";
import * as signin from "./pages/signin.js";
import { Router } from "./router.js";
import { Store } from "./store.js";
import { Feed } from "./ws.js";

const PAGES = { overview: overviewPage, jobs: jobsPage, job: jobPage, runner: runnerPage };

class App {
  constructor() {
    this.root = document.getElementById("view");
    this.status = document.getElementById("feed-status");
    this.store = new Store();
    this.logListeners = new Set();
    this.page = null;
    this.route = null;
    this.socket = { open: false, retryIn: 0 };
    this.feed = new Feed({
      onMessage: (msg) => this.received(msg),
      onStatus: (st) => {
        this.socket = st;
        this.showStatus();
      },
      onClose: () => this.checkSession(),
    });
    this.router = new Router((route) => this.show(route));
    this.store.listen((topic) => {
      if (topic === "state") this.showStatus();
    });
    this.ctx = {
      root: this.root,
      store: this.store,
      feed: this.feed,
      router: this.router,
      signIn: (why) => this.signIn(why),
      onLog: (fn) => {
        this.logListeners.add(fn);
        return () => this.logListeners.delete(fn);
      },
    };
    document.getElementById("sign-out").addEventListener("click", () => this.signOut());
  }

  async start() {
    const token = signin.tokenFromAddress();
    if (token) {
      try {
        await api.signIn(token);
      } catch (err) {
        this.signIn(`The sign-in link was not accepted: ${err.message}`);
        return;
      }
    }
    await this.connect();
  }

  /** Load the present, then open the feed and draw the page of the address. */
  async connect() {
    try {
      this.store.replace(await api.state());
    } catch (err) {
      if (err.signIn) {
        this.signIn();
        return;
      }
      fill(this.root, message("error", err.message));
      setTimeout(() => this.connect(), 5000);
      return;
    }
    document.body.classList.remove("signed-out");
    this.feed.open();
    this.router.dispatch();
    this.checkSession();
  }

  /** After a socket closed: a session that ended (revoked token, restart) asks for sign-in. */
  async checkSession() {
    let session;
    try {
      session = await api.session();
    } catch {
      return; // the server is away: the socket's back-off goes on
    }
    document.getElementById("sign-out").hidden = !session.signed_in;
    if (!session.signed_in && !session.public_read && this.page) {
      this.signIn("Your session ended; sign in again.");
    }
  }

  received(msg) {
    if (msg.type === "state" && msg.state) this.store.replace(msg.state);
    else if (msg.type === "update") this.store.update(msg.topic, msg.items);
    else if (msg.type === "log") for (const fn of this.logListeners) fn(msg);
    else if (msg.type === "error") this.showStatus(String(msg.error));
  }

  show(route) {
    if (this.page) this.page.destroy();
    this.page = null;
    this.route = route;
    markNav(route.name);
    const page = PAGES[route.name];
    if (!page) {
      fill(this.root, h("div", { class: "card" }, h("h1", {}, "Not found"),
        h("p", {}, "No page at this address. ", h("a", { href: "/" }, "Back to the overview"))));
      return;
    }
    this.page = page.mount(this.ctx, route);
  }

  signIn(why) {
    if (this.page) this.page.destroy();
    this.page = null;
    this.feed.close();
    document.body.classList.add("signed-out");
    signin.mount(this.root, () => this.connect(), why);
  }

  async signOut() {
    try {
      await api.signOut();
    } catch {
      // signed out already, or the server is away: the form is what follows either way
    }
    this.signIn("Signed out.");
  }

  showStatus(error) {
    const el = this.status;
    let text;
    let kind;
    if (!this.socket.open) {
      const secs = Math.ceil(this.socket.retryIn / 1000);
      [text, kind] = [secs ? `reconnecting in ${secs}s` : "connecting…", "down"];
    } else if (!this.store.feed.connected) {
      [text, kind] = ["dispatcher feed lost", "warn"];
    } else {
      [text, kind] = ["live", "up"];
    }
    el.className = `feed-status feed-${kind}`;
    el.textContent = error ? `${text} · ${error}` : text;
  }
}

function markNav(name) {
  for (const a of document.querySelectorAll("header nav a")) {
    const active = a.dataset.page === name || (name === "job" && a.dataset.page === "jobs");
    a.classList.toggle("active", active);
  }
}

function themeToggle() {
  const button = document.getElementById("theme");
  const order = ["auto", "dark", "light"];
  const apply = (theme) => {
    document.documentElement.dataset.theme = theme;
    button.textContent = `theme: ${theme}`;
  };
  apply(localStorage.getItem("narwhal-theme") || "auto");
  button.addEventListener("click", () => {
    const next = order[(order.indexOf(document.documentElement.dataset.theme) + 1) % 3];
    localStorage.setItem("narwhal-theme", next);
    apply(next);
  });
}

themeToggle();
new App().start();
