#!/usr/bin/env bash
# Starts the loopback servers the test suite talks to, if they are not already answering.
# The commands are this machine kind's own (see the `env` notes): every service binds to
# 127.0.0.1 only. Exits non-zero naming each server that could not be started.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() { # port seconds
  for _ in $(seq 1 $(( $2 * 5 ))); do up "$1" && return 0; sleep 0.2; done
  return 1
}

start() { # name port command...
  local name=$1 port=$2; shift 2
  if up "$port"; then echo "services: $name is up on 127.0.0.1:$port"; return 0; fi
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "services: $name is down and $1 is not installed" >&2; return 1
  fi
  echo "services: starting $name"
  "$@" >/dev/null 2>&1 || true
  if wait_up "$port" 60; then echo "services: $name is up on 127.0.0.1:$port"
  else echo "services: $name did not come up on 127.0.0.1:$port" >&2; return 1; fi
}

failed=()
start postgresql 5432 bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || failed+=(postgresql)
start redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || failed+=(redis)
start rabbitmq 5672 rabbitmq-server -detached || failed+=(rabbitmq)
start mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf || failed+=(mosquitto)
start nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || failed+=(nats)

if [ ${#failed[@]} -gt 0 ]; then
  echo "services: could not start: ${failed[*]}" >&2
  exit 1
fi
