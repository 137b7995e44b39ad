#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside (never joined with) the system
# node: nodes ra, rb, rc on AMQP ports 5681-5683, management 15681-15683, each with its
# own data under $CARTBUS_CLUSTER_DIR (default /tmp/cartbus-cluster). The recipe is the
# one in AMQP-NOTES.md, run with Debian's RabbitMQ 3.10. Used by tests/cluster.rs.
# Two standalone nodes, never clustered, are there for tests/datacenters.rs (one broker
# per site): eu on 5691 and us on 5692 (management 15691-15692), started with `up`.
#
#   rabbitmq-cluster.sh start           start the nodes that are down, cluster them
#   rabbitmq-cluster.sh kill NODE       kill -9 one node (ra, rb, rc, eu or us)
#   rabbitmq-cluster.sh stop NODE       stop one node cleanly
#   rabbitmq-cluster.sh up NODE         start one node (again; a cluster node rejoins)
#   rabbitmq-cluster.sh remove          stop every node under the directory, delete it
set -euo pipefail

BASE=${CARTBUS_CLUSTER_DIR:-/tmp/cartbus-cluster}
HOST=$(hostname -s)
NODES=(ra rb rc)

port() {
  case $1 in
  ra) echo 5681 ;; rb) echo 5682 ;; rc) echo 5683 ;; eu) echo 5691 ;; us) echo 5692 ;;
  *) echo "no node $1" >&2; exit 2 ;;
  esac
}

ctl() { local node=$1; shift; rabbitmqctl -q -n "$node@$HOST" "$@"; }

running() { ctl "$1" status >/dev/null 2>&1; }

up() {
  local node=$1 dir="$BASE/$1" amqp
  amqp=$(port "$node")
  running "$node" && return 0
  mkdir -p "$dir/log"
  printf 'listeners.tcp.default = %s\nmanagement.tcp.port = %s\nloopback_users = none\n' \
    "$amqp" "$((amqp + 10000))" >"$dir/rabbitmq.conf"
  echo '[rabbitmq_amqp1_0,rabbitmq_management].' >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir"
  RABBITMQ_NODENAME="$node@$HOST" RABBITMQ_NODE_PORT="$amqp" \
    RABBITMQ_DIST_PORT="$((amqp + 20000))" RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" rabbitmq-server -detached >/dev/null 2>&1
  ctl "$node" wait --timeout 120 "$dir/pid" >/dev/null
  ctl "$node" await_startup --timeout 120 >/dev/null
}

clustered() { ctl ra cluster_status --formatter json 2>/dev/null | grep -q "\"rc@$HOST\"" &&
  ctl ra cluster_status --formatter json | grep -q "\"rb@$HOST\""; }

case ${1:-} in
start)
  for node in "${NODES[@]}"; do up "$node"; done
  if ! clustered; then
    for node in rb rc; do
      ctl "$node" stop_app >/dev/null 2>&1
      ctl "$node" reset >/dev/null 2>&1
      ctl "$node" join_cluster "ra@$HOST" >/dev/null 2>&1
      ctl "$node" start_app >/dev/null 2>&1
    done
  fi
  for node in "${NODES[@]}"; do ctl "$node" await_startup --timeout 120 >/dev/null; done
  echo "cluster up: amqp://127.0.0.1:5681,5682,5683 (management 15681-15683)"
  ;;
kill)
  port "$2" >/dev/null
  if [ -f "$BASE/$2/pid" ]; then kill -9 "$(cat "$BASE/$2/pid")" 2>/dev/null || true; fi
  ;;
stop)
  port "$2" >/dev/null
  ctl "$2" stop >/dev/null 2>&1 || true
  ;;
up)
  up "$2"
  ;;
remove)
  for dir in "$BASE"/*/; do
    [ -d "$dir" ] || continue
    node=$(basename "$dir")
    ctl "$node" stop >/dev/null 2>&1 || true
    if [ -f "$BASE/$node/pid" ]; then kill -9 "$(cat "$BASE/$node/pid")" 2>/dev/null || true; fi
  done
  rm -rf "$BASE"
  ;;
*)
  sed -n '2,14p' "$0" >&2
  exit 2
  ;;
esac
