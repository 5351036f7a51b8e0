#!/usr/bin/env bash
# Installs (Debian's zookeeper) and starts a standalone ZooKeeper on 127.0.0.1:2181 with its data
# and configuration in a directory of its own under /tmp, unless something already answers there.
# The registry's ZooKeeper backend talks to it. A short tick (200 ms) lets sessions, and so the
# ephemeral nodes that hold registrations, be as short as 400 ms. Exits non-zero when it cannot
# start it.
set -u
PORT=2181
up() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if up; then echo "zookeeper: up on 127.0.0.1:$PORT"; exit 0; fi

JAR=/usr/share/java/zookeeper.jar
if [ ! -f "$JAR" ]; then
  echo "zookeeper: installing Debian's zookeeper"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null 2>&1; }; }; then
    echo "zookeeper: apt-get install zookeeper failed" >&2; exit 1
  fi
fi
if [ ! -f "$JAR" ] || ! command -v java >/dev/null; then
  echo "zookeeper: no $JAR or no java after installing zookeeper" >&2; exit 1
fi

DIR=${ZOOKEEPER_DIR:-/tmp/switchyard-zookeeper}
LOG=${ZOOKEEPER_LOG:-/tmp/zookeeper.log}
mkdir -p "$DIR/data"
cat >"$DIR/zoo.cfg" <<CFG
tickTime=200
initLimit=10
syncLimit=5
dataDir=$DIR/data
clientPort=$PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,stat
CFG
echo "zookeeper: starting (config $DIR/zoo.cfg, log $LOG)"
nohup java -Dzookeeper.log.dir="$DIR" -cp "/etc/zookeeper/conf:$JAR:/usr/share/java/*" \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$DIR/zoo.cfg" >"$LOG" 2>&1 &
for _ in $(seq 1 300); do
  if up; then echo "zookeeper: up on 127.0.0.1:$PORT"; exit 0; fi
  sleep 0.2
done
echo "zookeeper: did not come up on 127.0.0.1:$PORT (see $LOG)" >&2
exit 1
