# RabbitMQ on 127.0.0.1:5672 (guest/guest): the agent publishes commit events
# to it and the dispatcher consumes them; tests/agent and
# tests/dispatcher/test_amqp.py use it for real and fail when it is missing.
# Sourced by scripts/test (see README.md beside this file).

PACKAGES+=(rabbitmq-server)
STARTS+=(start_rabbitmq)

_rabbitmq_answers() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

start_rabbitmq() {
    if _rabbitmq_answers; then
        return 0
    fi
    if rabbitmqctl -q -t 5 ping >/dev/null 2>&1; then
        # The node runs but its application was stopped (a test that was
        # killed between stop_app and start_app): start it again.
        log "starting the stopped RabbitMQ application"
        rabbitmqctl -q start_app >/dev/null
    else
        log "starting rabbitmq-server"
        rabbitmq-server -detached
    fi
    local i
    for i in $(seq 1 120); do
        if _rabbitmq_answers; then
            log "RabbitMQ answers on 127.0.0.1:5672"
            return 0
        fi
        sleep 0.5
    done
    log "RabbitMQ did not answer on 127.0.0.1:5672 within 60s"
    return 1
}
