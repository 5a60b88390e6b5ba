"""Narwhal's exception tree.

    NarwhalError
    ├── ConfigError        a flag, environment variable or config value is invalid
    ├── PipelineError      narwhal.yml is invalid (one line: FILE:LINE: FIELD: message)
    ├── ProtocolError      a mesh frame is malformed, oversized or of another version
    ├── StoreError         the job store cannot do what was asked
    │   ├── NotFound       no such job or runner
    │   └── SecretError    a stored secret does not decrypt with the key in the data dir
    ├── CheckoutError      git could not fetch or check out the commit
    ├── RepoError          a repository URL, ref or commit id is refused (narwhal.repos)
    ├── ExecutorError      a step could not be started (not: the step failed)
    └── DiscoveryError     mDNS could not start on the chosen interfaces

Third-party exceptions (zmq, sqlite3, docker, aio-pika, zeroconf, cryptography) are translated into
these only in the module that talks to that library.
"""


class NarwhalError(Exception):
    """Base of every error Narwhal raises on purpose."""


class ConfigError(NarwhalError):
    """A flag, environment variable or config value is invalid."""


class PipelineError(NarwhalError):
    """narwhal.yml is invalid; str() is one line 'FILE:LINE: FIELD: message'."""


class ProtocolError(NarwhalError):
    """A frame could not be decoded or does not follow the wire protocol."""


class StoreError(NarwhalError):
    """The job store refused or failed an operation."""


class NotFound(StoreError):
    """The job or runner asked for does not exist."""


class LeadershipLost(StoreError):
    """The leader's lock session ended: another dispatcher may lead now."""


class SecretError(StoreError):
    """A stored secret does not decrypt with ``secrets.key`` (another key, or tampered)."""


class CheckoutError(NarwhalError):
    """The repository could not be fetched or the commit checked out."""


class RepoError(NarwhalError):
    """A repository URL, ref or commit id is not one Narwhal hands to git."""


class ExecutorError(NarwhalError):
    """A step could not be started at all (distinct from a step that failed)."""


class DiscoveryError(NarwhalError):
    """mDNS (announcing or browsing) could not start on the chosen interfaces."""
