// Sign-in: an API token of the dispatcher, posted to /session (the backend checks it
// and keeps it; the page only ever holds it while posting).

import { api } from "../api.js";
import { message } from "../components.js";
import { fill, h } from "../dom.js";

/** Show the form in root; onDone() once the backend accepted a token. */
export function mount(root, onDone, why = "") {
  const token = h("input", { type: "password", name: "token", autocomplete: "off",
    placeholder: "nw_…", "aria-label": "API token", required: true });
  const said = h("div", { class: "notices" }, why ? message("info", why) : null);
  const submit = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { class: "signin card" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Give an API token of the dispatcher (read scope to look, write scope to cancel "
      + "and resubmit). `narwhal up` prints a sign-in link that does this for you."),
    token, submit, said);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      await api.signIn(token.value.trim());
      token.value = "";
      onDone();
    } catch (err) {
      fill(said, message("error", err.status === 401 || err.status === 403
        ? (err.message || "That token was not accepted.") : err.message));
    } finally {
      submit.disabled = false;
    }
  });
  fill(root, h("div", { class: "signin-page" }, form));
  document.title = "Narwhal — sign in";
  token.focus();
}

/** The token of a sign-in link (`#token=...`), taken out of the address at once. */
export function tokenFromAddress() {
  const hash = location.hash.startsWith("#") ? location.hash.slice(1) : "";
  const token = new URLSearchParams(hash).get("token");
  if (token === null) return null;
  history.replaceState(history.state, "", location.pathname + location.search);
  return token;
}
