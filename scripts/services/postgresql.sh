# PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres, database test):
# the PostgreSQL store's contract suite, backups and the leader lock
# (tests/dispatcher/store, tests/test_backup.py, tests/dispatcher/test_leadership.py)
# use it for real and fail when it is missing. pg_dump and pg_restore come
# with postgresql-client.
# Sourced by scripts/test (see README.md beside this file).

PACKAGES+=(postgresql postgresql-client)
STARTS+=(start_postgresql)

_postgresql_answers() {
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
}

start_postgresql() {
    if _postgresql_answers; then
        return 0
    fi
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    local i
    for i in $(seq 1 60); do
        if _postgresql_answers; then
            log "PostgreSQL answers on 127.0.0.1:5432"
            return 0
        fi
        sleep 0.5
    done
    log "PostgreSQL did not answer on 127.0.0.1:5432 within 30s"
    return 1
}
