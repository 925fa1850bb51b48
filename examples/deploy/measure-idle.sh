#!/bin/bash
# Idle memory of one member agent on a LAN address of its own (a network namespace), with LAN
# discovery on or off: the figures of docs/BENCHMARKS.md, "Binary size and memory".
#
#   sudo examples/deploy/measure-idle.sh target/release/starling on     # or off
#
# Prints VmRSS, RssAnon and RssFile (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) 60 s
# after the start (MEASURE_AFTER=SECS to change). Needs root and iproute2.
set -euo pipefail
bin=$(realpath "$1") mode=${2:-on} after=${MEASURE_AFTER:-60}
case "$mode" in on | off) ;; *) echo "usage: $0 BINARY on|off" >&2 && exit 2 ;; esac
ns=stlidle$$ veth=vidle$$ dir=$(mktemp -d)
cleanup() {
	[ -z "${pid:-}" ] || kill "$pid" 2>/dev/null || true
	sleep 1
	ip netns del "$ns" 2>/dev/null || true
	ip link del "$veth" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$veth" type veth peer name eth0 netns "$ns"
ip addr add 10.250.7.254/24 dev "$veth" && ip link set "$veth" up
ip -n "$ns" addr add 10.250.7.1/24 dev eth0
ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up
"$bin" init --data-dir "$dir/a" --cluster-dir "$dir/c" --node-id idle-1 \
	--advertise 10.250.7.1:7946 >/dev/null 2>&1
flags=()
[ "$mode" = on ] || flags=(--discover off)
ip netns exec "$ns" "$bin" agent --data-dir "$dir/a" --listen 10.250.7.1:7946 "${flags[@]}" \
	2>"$dir/log" &
pid=$!
sleep "$after"
# `ip netns exec` execs the agent: $! is the agent itself.
status=$(grep -E "^(VmRSS|RssAnon|RssFile):" "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')
pss=$(grep -E "^Pss:" "/proc/$pid/smaps_rollup" | tr -s ' \t' ' ')
discovery=$(grep -q "LAN discovery on" "$dir/log" && echo on || echo off)
echo "$(basename "$bin") $(stat -c %s "$bin") B, discovery $discovery: $status$pss"
