#!/bin/sh
# Upgrades the Starling agent across a fleet, one device at a time:
#
#   rolling-upgrade.sh --binary target/release/starling node-a=root@10.0.0.7 node-b=pi@10.0.0.8
#
# For each device, in the order given: record its generation (`starling node generation`),
# copy the new binary over (install.sh's layout: /usr/local/bin/starling), restart the unit
# (`systemctl restart starling`: SIGTERM, the agent's graceful --on-stop; `leave` keeps its
# replicas running for the new agent to adopt), then `starling node wait --restarted-after
# GEN --healthy` until the device is back in a newer life and every workload runs its
# desired count again. The first device that does not come back stops the run (exit 1);
# the ones after it are left as they were.
#
# NODE=user@host names the device's node id and where ssh reaches it; a bare NODE is
# reached at NODE. The operator's CLI runs here: $STARLING (default `starling`, e.g.
# "starling --peer 10.0.0.2:7946 --cluster-dir ~/fleet"). $STARLING_SSH and $STARLING_SCP
# replace ssh and scp. --restart-cmd CMD replaces the copy-and-restart step: CMD runs under
# sh with $1 the node, $2 the host and $3 the binary (tests use it; so can other tooling).
set -eu
set -f

die() {
	echo "rolling-upgrade.sh: $*" >&2
	exit 2
}

binary= timeout=300s restart_cmd=
while [ $# -gt 0 ]; do
	case "$1" in
	--binary | --timeout | --restart-cmd)
		[ $# -ge 2 ] || die "$1 needs a value"
		case "$1" in
		--binary) binary=$2 ;;
		--timeout) timeout=$2 ;;
		--restart-cmd) restart_cmd=$2 ;;
		esac
		shift 2
		;;
	-h | --help)
		sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	--) shift && break ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) break ;;
	esac
done
[ -n "$binary" ] || die "missing --binary PATH (the new starling binary)"
[ -f "$binary" ] || die "--binary $binary: no such file"
[ $# -gt 0 ] || die "no devices given (NODE=user@host ...)"

starling=${STARLING:-starling}
ssh=${STARLING_SSH:-ssh} scp=${STARLING_SCP:-scp}
total=$#

# A fleet that is short before the first restart would fail the first wait for reasons of
# its own: say so instead of blaming the upgrade.
first=${1%%=*}
echo "checking that the fleet is healthy before the first restart"
$starling node wait "$first" --healthy --timeout 60s ||
	die "the fleet is not healthy before the upgrade, or its listings cannot be read (see above; a CLI reads only agents of its own build's listing format: point \$STARLING at one); nothing was restarted"

i=0
for device in "$@"; do
	i=$((i + 1))
	node=${device%%=*}
	host=${device#*=}
	step="[$i/$total] $node"
	generation=$($starling node generation "$node") ||
		die "$step: cannot read its generation (see above); nothing restarted on it"
	echo "$step: generation $generation; installing the new binary on $host and restarting"
	if [ -n "$restart_cmd" ]; then
		sh -c "$restart_cmd" rolling-upgrade "$node" "$host" "$binary" ||
			die "$step: --restart-cmd failed (exit $?); devices after it are not upgraded"
	else
		$scp -q "$binary" "$host:/tmp/starling.upgrade" ||
			die "$step: cannot copy the binary to $host"
		# Renamed over the old file (which the running agent keeps open) in one step, then
		# restarted: systemd sends SIGTERM, waits for the graceful stop, starts the new one.
		$ssh "$host" '$( [ "$(id -u)" -eq 0 ] || echo sudo ) sh -c "install -m 0755 /tmp/starling.upgrade /usr/local/bin/.starling.new && mv -f /usr/local/bin/.starling.new /usr/local/bin/starling && rm -f /tmp/starling.upgrade && systemctl restart starling"' ||
			die "$step: installing or restarting on $host failed; devices after it are not upgraded"
	fi
	echo "$step: restarted; waiting up to $timeout for it to rejoin healthy"
	if ! $starling node wait "$node" --restarted-after "$generation" --healthy --timeout "$timeout"; then
		echo "$step: did not rejoin healthy; stopping here ($((total - i)) devices not upgraded)" >&2
		exit 1
	fi
	echo "$step: upgraded"
done
echo "all $total devices upgraded"
