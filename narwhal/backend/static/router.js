// Routing by path in the single page: "/", "/jobs", "/jobs/{id}", "/runners/{id}".
// Clicks on the page's own links change the address with history.pushState; the
// back button comes back through popstate. The server answers each of these paths
// with index.html, so a reload or a shared link opens the same page.

const ROUTES = [
  [/^\/$/, "overview"],
  [/^\/jobs\/?$/, "jobs"],
  [/^\/jobs\/(\d+)\/?$/, "job"],
  [/^\/runners\/([^/]+)\/?$/, "runner"],
];

/** {name, params, query} for a location; name "missing" for an unknown path. */
export function match(url) {
  for (const [pattern, name] of ROUTES) {
    const m = pattern.exec(url.pathname);
    if (m) {
      const params = m.slice(1).map((p) => decodeURIComponent(p));
      return { name, params, query: url.searchParams };
    }
  }
  return { name: "missing", params: [], query: url.searchParams };
}

export class Router {
  /** onRoute(route): called with the route of each new address. */
  constructor(onRoute) {
    this.onRoute = onRoute;
    addEventListener("popstate", () => this.dispatch());
    document.addEventListener("click", (event) => this.clicked(event));
  }

  clicked(event) {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const a = event.target.closest("a[href]");
    if (!a || a.target || a.hasAttribute("download")) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
    if (match(url).name === "missing") return;
    event.preventDefault();
    this.go(url.pathname + url.search);
  }

  /** Open path (with its query) as a new history entry. */
  go(path, { replace = false } = {}) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    this.dispatch();
  }

  dispatch() {
    this.onRoute(match(new URL(location.href)));
  }
}
