// The live feed (WS /ws, docs/backend.md): one socket per page, reopened after any
// close with a back-off of 1 s doubling to 30 s (with jitter, so a wall of screens
// does not reconnect in step after a restart), reset once a socket got its state.

const FIRST_DELAY = 1000;
const MAX_DELAY = 30000;

export class Feed {
  /**
   * onMessage(msg): every message from the server.
   * onStatus({open, retryIn}): the socket's state, for the header's indicator.
   * onClose(code): a socket closed (1008: too slow, or the session ended).
   */
  constructor({ onMessage, onStatus, onClose, url }) {
    this.onMessage = onMessage;
    this.onStatus = onStatus || (() => {});
    this.onClose = onClose || (() => {});
    this.url = url || defaultUrl();
    this.delay = FIRST_DELAY;
    this.socket = null;
    this.timer = null;
    this.followed = null;
    this.closed = false;
  }

  open() {
    this.closed = false;
    clearTimeout(this.timer);
    if (this.socket) {
      const old = this.socket;
      this.socket = null;
      old.close();
    }
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.onStatus({ open: true, retryIn: 0 });
      if (this.followed !== null) this.send({ type: "follow", job_id: this.followed });
    });
    socket.addEventListener("message", (event) => this.received(event.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.closed) return;
      this.retry();
      this.onClose(event.code);
    });
  }

  received(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // not ours to show: the server only sends JSON
    }
    if (!msg || typeof msg.type !== "string") return;
    if (msg.type === "state") this.delay = FIRST_DELAY;
    this.onMessage(msg);
  }

  retry() {
    const wait = Math.round(this.delay * (0.75 + Math.random() * 0.5));
    this.delay = Math.min(this.delay * 2, MAX_DELAY);
    this.onStatus({ open: false, retryIn: wait });
    this.timer = setTimeout(() => this.open(), wait);
  }

  send(msg) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  /** Follow one job's log (sent again after each reconnect); null stops following. */
  follow(jobId) {
    this.followed = jobId === null ? null : Number(jobId);
    this.send(jobId === null ? { type: "unfollow" } : { type: "follow", job_id: this.followed });
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
    this.socket = null;
  }
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}
