# A Docker engine on the local socket (/var/run/docker.sock): the Docker
# executor's tests (tests/runner/test_docker.py) run real containers and fail
# when no engine answers. busybox-static is the root filesystem of the test
# image, which the tests import themselves: nothing is ever pulled.
# Sourced by scripts/test (see README.md beside this file).
#
# dockerd runs with its defaults here (overlay2, iptables, its own
# containerd). Should overlay2 be refused (a filesystem that cannot hold it),
# it is started again with the vfs storage driver; docs/docker.md explains.

PACKAGES+=(docker.io busybox-static)
STARTS+=(start_docker)

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/narwhal-dockerd.log}

_docker_answers() {
    docker info >/dev/null 2>&1
}

_dockerd_launch() {
    local pidfile=/var/run/docker.pid
    # A dockerd killed without cleanup leaves its pid file, and a new one
    # refuses to start while it is there.
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        rm -f "$pidfile"
    fi
    log "starting dockerd $* (log: $DOCKERD_LOG)"
    setsid nohup dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    _dockerd_pid=$!
}

_dockerd_wait() {
    local i
    for i in $(seq 1 60); do
        if _docker_answers; then
            log "Docker engine answers on /var/run/docker.sock"
            return 0
        fi
        if ! kill -0 "$_dockerd_pid" 2>/dev/null; then
            return 1  # it exited: its log says why
        fi
        sleep 0.5
    done
    return 1
}

start_docker() {
    if _docker_answers; then
        return 0
    fi
    _dockerd_launch
    if _dockerd_wait; then
        return 0
    fi
    kill "$_dockerd_pid" 2>/dev/null || true
    sleep 1
    log "dockerd did not come up with its defaults; trying the vfs storage driver"
    _dockerd_launch --storage-driver=vfs
    if _dockerd_wait; then
        return 0
    fi
    log "the Docker engine did not answer within 30s; the end of $DOCKERD_LOG:"
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    return 1
}
