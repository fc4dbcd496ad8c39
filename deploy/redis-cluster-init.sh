#!/bin/sh
# Forms the Redis Cluster of deploy/compose.cluster.yml (3 primaries, 3
# replicas) the first time, and only then: run again on a formed cluster (every
# `up`), it leaves the slots alone. It runs in the redis image, so POSIX sh and
# redis-cli only.
#
# NODES lists host:port of every node, the would-be primaries first. Exits 0
# once every node reports cluster_state:ok, non-zero after WAIT_SECONDS
# (default 120) without it.
set -eu

NODES=${NODES:-"redis-1:6379 redis-2:6379 redis-3:6379 redis-4:6379 redis-5:6379 redis-6:6379"}
WAIT_SECONDS=${WAIT_SECONDS:-120}

cli() {  # cli host:port command...
  node=$1
  shift
  redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

waited=0
tick() {  # tick what: one second more of the wait, or give up saying on what
  if [ "$waited" -ge "$WAIT_SECONDS" ]; then
    echo "redis-cluster-init: gave up after ${WAIT_SECONDS}s waiting for $1" >&2
    exit 1
  fi
  waited=$((waited + 1))
  sleep 1
}

for node in $NODES; do
  until [ "$(cli "$node" ping 2>/dev/null)" = "PONG" ]; do tick "$node to answer"; done
done

set -- $NODES
first=$1
if cli "$first" cluster info | grep -q '^cluster_slots_assigned:16384'; then
  echo "redis-cluster-init: the cluster is already formed"
  # Containers can come back on new addresses, and the cluster bus knows its
  # peers by address only: a MEET at each node's current address (its local
  # address on a connection to it) lets every node learn it again. A MEET to a
  # known node changes nothing else.
  for node in $NODES; do
    address=$(cli "$node" client info | sed -n 's/.* laddr=\([^ ]*\) .*/\1/p')
    bus_port=$(cli "$node" cluster nodes | sed -n 's/^[^ ]* [^ ]*@\([0-9]*\)[ ,].*myself.*/\1/p')
    for peer in $NODES; do
      [ "$peer" != "$node" ] || continue
      reply=$(cli "$peer" cluster meet "${address%:*}" "${address##*:}" "$bus_port")
      [ "$reply" = OK ] || { echo "redis-cluster-init: $peer, MEET $node: $reply" >&2; exit 1; }
    done
  done
else
  # Bounded: redis-cli waits for the nodes to agree without end.
  timeout "$WAIT_SECONDS" redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
fi

for node in $NODES; do
  until cli "$node" cluster info | grep -q '^cluster_state:ok'; do tick "$node to see the cluster"; done
done
echo "redis-cluster-init: cluster_state:ok on every node"
