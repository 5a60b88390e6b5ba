"""The one validator of repository URLs, refs and commit ids (narwhal/repos.py)."""

from __future__ import annotations

import subprocess

import pytest

from narwhal.errors import RepoError
from narwhal.repos import check_ref, check_repo, check_sha, protocols

ACCEPTED = [
    "https://github.com/octo/hello.git",
    "https://x-access-token:ghs_abc@github.com/octo/hello.git",
    "http://gitea.lan:3000/octo/hello.git",
    "ssh://git@gitlab.example/group/sub/project.git",
    "ssh://git@[::1]:2222/repo.git",
    "git://git.kernel.org/pub/scm/git/git.git",
    "git@github.com:octo/hello.git",
    "deploy@10.0.0.5:/srv/git/hello.git",
]
INJECTIONS = [
    "--upload-pack=touch MARKER;:@x",
    "--upload-pack=touch${IFS}MARKER;:@x",
    "-uMARKER",
    "ext::sh -c touch% MARKER",
    "ext::sh%20-c%20touch",
    "fd::17",
    "ssh://-oProxyCommand=touch%20MARKER/x",
    "ssh://-oProxyCommand=touch MARKER/x",
    "git@host:--upload-pack=touch",
    "https://host/x --upload-pack=touch",
    "https://-host/x",
    "ssh://-user@host/x",
    "https://host/x\n--upload-pack=y",
    "https://host/\x00",
    "https://host/\udcff",
    "",
    "x" * 3000,
]
LOCAL = ["/srv/git/hello", "file:///srv/git/hello"]
NEITHER = ["relative/path", "host:path", "ftp://host/x", "file://host/x", "HTTPS://host/x"]


@pytest.mark.parametrize("url", ACCEPTED)
def test_clone_urls_are_accepted_everywhere(url: str) -> None:
    assert check_repo(url, allow_local=False) == url
    assert check_repo(url, allow_local=True) == url


@pytest.mark.parametrize("url", INJECTIONS)
def test_option_and_transport_injections_are_refused_even_where_local_is_allowed(
    url: str,
) -> None:
    with pytest.raises(RepoError, match="^repo: ") as caught:
        check_repo(url, allow_local=True)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("url", LOCAL)
def test_local_paths_only_where_allowed(url: str) -> None:
    assert check_repo(url, allow_local=True) == url
    with pytest.raises(RepoError, match="--allow-local-repos"):
        check_repo(url, allow_local=False)


@pytest.mark.parametrize("url", NEITHER)
def test_other_forms_are_refused(url: str) -> None:
    with pytest.raises(RepoError, match="^repo: expected"):
        check_repo(url, allow_local=True)


@pytest.mark.parametrize(
    "ref", ["HEAD", "main", "feature/x-1", "refs/heads/main", "refs/tags/v1.0", "refs/pull/7/head"]
)
def test_refs_git_accepts(ref: str) -> None:
    assert check_ref(ref) == ref
    if ref != "HEAD":  # the refs we pass are ones git itself calls valid
        done = subprocess.run(
            ["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True
        )
        assert done.returncode == 0


@pytest.mark.parametrize(
    "ref",
    [
        "--upload-pack=touch MARKER",
        "--upload-pack=touch",
        "-x",
        "+refs/heads/main",
        "refs/heads/a..b",
        "refs/heads/a:refs/heads/b",
        "refs/heads/*",
        "refs/heads/a b",
        "refs/heads/a\x00",
        "refs/heads/x.lock",
        "refs/heads/.hidden",
        "refs/heads/a/",
        "refs/heads//a",
        "refs/heads/a.",
        "a@{1}",
        "@",
        "refs/heads/a\\b",
        "refs/heads/~1",
        "r" * 300,
        "",
    ],
)
def test_refs_git_would_misread_are_refused(ref: str) -> None:
    with pytest.raises(RepoError, match="^ref: "):
        check_ref(ref)


def test_shas_are_full_lowercase_hex() -> None:
    assert check_sha("a" * 40) == "a" * 40
    assert check_sha("b" * 64) == "b" * 64
    for bad in ("A" * 40, "a" * 39, "a" * 41, "--upload-pack=x", "g" * 40, 40):
        with pytest.raises(RepoError, match="^sha: "):
            check_sha(bad)


def test_git_protocols_follow_the_local_policy() -> None:
    assert protocols(allow_local=False) == ("https", "http", "ssh", "git")
    assert "file" in protocols(allow_local=True)


def test_a_refusal_never_repeats_a_credential() -> None:
    with pytest.raises(RepoError) as caught:
        check_repo("https://bot:ghp_s3cr3t@-evil/x.git", allow_local=False)
    assert "s3cr3t" not in str(caught.value) and "***@" in str(caught.value)
