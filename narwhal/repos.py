"""What Narwhal accepts as a repository URL, a ref and a commit id, before git sees them.

One validator for every door a job comes in by: the REST API, forge webhooks
(``narwhal.events``) and the runner, which checks ``JOB.repo``, ``ref`` and
``sha`` again before it runs git. git takes a value that starts with ``-``
as an option (``--upload-pack=CMD`` runs CMD), runs a program for
``<transport>::<address>`` URLs (``ext::sh -c CMD``), and local paths read
the runner's own disk; so only these forms pass:

- ``https://``, ``http://``, ``ssh://``, ``git://`` URLs with a host name or
  address that does not start with ``-``;
- scp-like ``user@host:path`` (``git@github.com:octo/hello.git``);
- ``file://`` URLs and absolute paths only when local repositories are
  allowed (``--allow-local-repos``: on for ``narwhal up``, off for
  ``narwhal dispatcher`` and ``narwhal runner``).

Nothing with whitespace, control characters or option-like parts passes, and
every refusal is one ``RepoError`` line. A leaf module: it imports nothing of
Narwhal but its errors.
"""

from __future__ import annotations

import re

from narwhal.errors import RepoError

MAX_URL = 2048
MAX_REF = 255

#: git protocols (``protocol.<name>.allow``) the forms above use.
REMOTE_PROTOCOLS = ("https", "http", "ssh", "git")
LOCAL_PROTOCOLS = ("file",)

_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
_URL = re.compile(
    rf"(?:https|http|ssh|git)://(?:(?!-)[^@/\[\]]{{1,512}}@)?{_HOST}(?::[0-9]{{1,5}})?(?:/.*)?"
)
# git takes "user@host:path" as ssh when no slash comes before the colon.
_SCP = re.compile(rf"[A-Za-z0-9_.~+][A-Za-z0-9_.~+-]{{0,127}}@{_HOST}:.+")
# What a user means as scp-like, valid or not: no slash before the colon.
_MEANT_SCP = re.compile(r"[^/:]+@[^/:]+:")
# git runs a remote helper for "<scheme chars>::<address>", ext:: among them.
_TRANSPORT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
# Options of git and ssh that run a program, wherever they hide in a value.
_OPTION = re.compile(r"--(?:upload|receive)-pack|--exec\b|--config\b|-o\s*proxycommand", re.I)
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
# git check-ref-format: none of these anywhere in a ref name.
_REF_FORBIDDEN = re.compile(r"\.\.|@\{|//|[~^:?*\[\\]|/\.|\.lock(?:/|$)|^\.|[/.]$|^/")


#: The user and password of a URL: a refusal never repeats a credential.
_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def _shown(value: str) -> str:
    text = _USERINFO.sub("***@", value, count=1)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _printable(value: str) -> bool:
    """No control characters, no whitespace, no lone surrogates (from undecodable bytes)."""
    return value.isprintable() and not any(c.isspace() for c in value)


def check_repo(url: object, *, allow_local: bool) -> str:
    """``url`` if it is an accepted clone URL, else ``RepoError`` saying why."""
    if not isinstance(url, str) or not url:
        raise RepoError("repo: expected a clone URL")
    if len(url) > MAX_URL:
        raise RepoError(f"repo: longer than {MAX_URL} characters")
    if url.startswith("-") or _OPTION.search(url):
        raise RepoError(f"repo: looks like a git option, not a clone URL: {_shown(url)}")
    if not _printable(url):
        raise RepoError("repo: contains whitespace or control characters")
    if _TRANSPORT.match(url):
        raise RepoError(f"repo: <transport>:: URLs are not accepted: {_shown(url)}")
    if _URL.fullmatch(url) or _SCP.fullmatch(url):
        return url
    if url.startswith(("file://", "/")):
        if not allow_local:
            raise RepoError(
                f"repo: local repositories are not allowed here (--allow-local-repos): "
                f"{_shown(url)}"
            )
        if url.startswith("/") or url.startswith("file:///"):
            return url
    raise RepoError(
        "repo: expected an https://, http://, ssh:// or git:// URL or user@host:path"
        f"{', or a local path' if allow_local else ''}, got {_shown(url)}"
    )


def meant_as_url(text: str) -> bool:
    """Whether a command-line REPO is meant as a URL (a scheme, or ``user@host:``), not a path.

    Loose on purpose: what it says is a URL is then checked by ``check_repo``,
    so a bad one is refused as a URL rather than looked for on disk.
    """
    return "://" in text or _MEANT_SCP.match(text) is not None


def check_ref(ref: object) -> str:
    """``ref`` if it is ``HEAD``, ``refs/...`` or a branch name git accepts."""
    if not isinstance(ref, str) or not ref:
        raise RepoError("ref: expected a git ref like refs/heads/main")
    if len(ref) > MAX_REF:
        raise RepoError(f"ref: longer than {MAX_REF} characters")
    if ref.startswith(("-", "+")):
        raise RepoError(f"ref: must not start with '-' or '+': {_shown(ref)}")
    if not _printable(ref):
        raise RepoError("ref: contains whitespace or control characters")
    if ref == "@" or _REF_FORBIDDEN.search(ref):
        raise RepoError(f"ref: not a valid git ref name: {_shown(ref)}")
    return ref


def check_sha(sha: object) -> str:
    """``sha`` if it is a full lowercase hex commit id (SHA-1 or SHA-256)."""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        shown = _shown(sha) if isinstance(sha, str) else type(sha).__name__
        raise RepoError(f"sha: expected a full 40-character hex commit id, got {shown}")
    return sha


def protocols(*, allow_local: bool) -> tuple[str, ...]:
    """The git protocols a checkout may use: exactly the accepted URL forms."""
    return REMOTE_PROTOCOLS + (LOCAL_PROTOCOLS if allow_local else ())
