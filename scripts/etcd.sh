#!/usr/bin/env bash
# Installs (Debian's etcd-server) and starts etcd on 127.0.0.1:2379 with its data in a directory
# of its own under /tmp, unless something already answers there. The registry's etcd backend talks
# to it. Exits non-zero when it cannot start it.
set -u
PORT=2379
up() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if up; then echo "etcd: up on 127.0.0.1:$PORT"; exit 0; fi

BIN=$(command -v etcd || true)
if [ -z "$BIN" ]; then
  echo "etcd: installing Debian's etcd-server"
  if ! { apt-get install -y -qq etcd-server >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq etcd-server >/dev/null 2>&1; }; }; then
    echo "etcd: apt-get install etcd-server failed" >&2; exit 1
  fi
  BIN=$(command -v etcd || true)
fi
if [ -z "$BIN" ]; then echo "etcd: no etcd binary after installing etcd-server" >&2; exit 1; fi

# Debian's package may start its own etcd through systemd; none runs here, so start one.
DATA=${ETCD_DATA:-/tmp/switchyard-etcd}
LOG=${ETCD_LOG:-/tmp/etcd.log}
echo "etcd: starting $BIN (data $DATA, log $LOG)"
nohup "$BIN" --name switchyard --data-dir "$DATA" \
  --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster switchyard=http://127.0.0.1:2380 >"$LOG" 2>&1 &
for _ in $(seq 1 150); do
  if up; then echo "etcd: up on 127.0.0.1:$PORT"; exit 0; fi
  sleep 0.2
done
echo "etcd: did not come up on 127.0.0.1:$PORT (see $LOG)" >&2
exit 1
