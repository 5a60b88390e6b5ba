// Human units: bytes in binary units, durations in h/m/s, times relative to now.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 327155712 -> "312 MiB"; three significant digits at most, whole numbers from 100 up. */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  let value = Math.max(0, n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  const text = value.toFixed(digits).replace(/\.0+$/, "").replace(/(\.\d*?)0+$/, "$1");
  return `${text} ${UNITS[unit]}`;
}

/** Seconds -> "850 ms", "4.2 s", "3m 07s", "2h 05m". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const sec = Math.max(0, seconds);
  if (sec < 1) return `${Math.round(sec * 1000)} ms`;
  if (sec < 10) return `${sec.toFixed(1)} s`;
  if (sec < 60) return `${Math.round(sec)} s`;
  const whole = Math.round(sec);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const r = whole % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  return `${m}m ${String(r).padStart(2, "0")}s`;
}

/** A unix time as "12 s ago" / "3 min ago" / a clock time for older ones. */
export function ago(unix, now = Date.now() / 1000) {
  if (!unix) return "—";
  const d = Math.max(0, now - unix);
  if (d < 5) return "just now";
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return clock(unix);
}

/** A unix time as the local date and time. */
export function clock(unix) {
  if (!unix) return "—";
  return new Date(unix * 1000).toLocaleString(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

/** "refs/heads/main" -> "main"; tags keep their kind; anything else as given. */
export function refName(ref) {
  if (typeof ref !== "string") return "";
  if (ref.startsWith("refs/heads/")) return ref.slice(11);
  if (ref.startsWith("refs/tags/")) return `tag ${ref.slice(10)}`;
  return ref;
}

/** A repository URL or path, shortened to its last two parts for tables. */
export function repoName(repo) {
  if (typeof repo !== "string") return "";
  const parts = repo.replace(/\.git$/, "").split(/[/:]/).filter(Boolean);
  return parts.slice(-2).join("/") || repo;
}

export function shortSha(sha) {
  return typeof sha === "string" ? sha.slice(0, 10) : "";
}

export function percent(part, whole) {
  if (!whole) return "—";
  return `${Math.round((100 * part) / whole)}%`;
}

/** CPU cores as "1.25 cores" / "0.40 cores". */
export function cores(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  return `${n.toFixed(n >= 10 ? 0 : 2)} cores`;
}

/** How long a job took, or has been running / waiting for. */
export function jobDuration(job, now = Date.now() / 1000) {
  if (job.started_at) return duration((job.finished_at || now) - job.started_at);
  return "—";
}
