#!/bin/sh
# Installs the Starling agent on a device and joins it to a fleet with a join token:
# the binary at /usr/local/bin/starling, the systemd unit, /etc/starling/agent.env (the
# token and the agent's flags), the data dir /var/lib/starling, `starling join`, then
# `systemctl enable --now starling`.
#
#   install.sh --binary target/release/starling --token "$(starling token create)" \
#              --advertise 10.0.0.7:7946 --seed 10.0.0.2:7946 [user@host]
#
# With user@host the files go over scp and the script runs there (with sudo unless the
# user is root); the token travels on ssh's stdin, never on a command line there.
# --root DIR stages everything under DIR instead of / (for images and tests), and
# --no-start leaves the unit neither enabled nor started. See README.md here.
set -eu
# Flag values are split on spaces below, never globbed.
set -f

usage() {
	cat <<'EOF'
usage: install.sh --binary PATH --token TOKEN|- [options] [user@host]

  --binary PATH       the starling binary to install (required)
  --token TOKEN       a join token (`starling token create` on a member); `-` reads it
                      from stdin. Not needed when the data dir already belongs to a cluster.
  --advertise H:P     base address peers reach this device at (recommended)
  --listen H:P        base address to listen on (default 0.0.0.0:7946)
  --seed H:P          a peer to gossip with at start (repeatable)
  --node-id ID        this device's node id (default: host name and a random suffix)
  --label K=V         a node label (repeatable)
  --on-stop MODE      leave (default), drain or stop: what `systemctl stop` does to replicas
  --agent-args ARGS   more `starling agent` flags, space-separated (e.g. "--network-profile wan")
  --unit FILE         the unit file (default: starling.service next to this script)
  --root DIR          install under DIR instead of / (staging; nothing is started)
  --no-join           write the files but do not join now (the agent joins at first start)
  --discover          no token: the device waits on its LAN to be admitted (`starling nodes
                      --pending`, `starling node admit NAME` on a member); see
                      docs/OPERATIONS.md, "Zero-config join on a LAN"
  --no-start          do not enable or start the unit
  user@host           install on that machine over ssh instead of this one
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 2
}

# One word of a command line for `sh -c` on the far side of ssh.
quote() {
	printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

binary= token= advertise= listen=0.0.0.0:7946 seeds= node_id= labels= on_stop=leave extra=
unit="$(dirname "$0")/starling.service"
root= join=yes start=yes remote= discover=no
forward=
while [ $# -gt 0 ]; do
	case "$1" in
	--binary | --token | --advertise | --listen | --seed | --node-id | --label | --on-stop | --agent-args | --unit | --root)
		[ $# -ge 2 ] || die "$1 needs a value (see --help)"
		case "$1" in
		--binary) binary=$2 ;;
		--token) token=$2 ;;
		--advertise) advertise=$2 ;;
		--listen) listen=$2 ;;
		--seed) seeds="$seeds $2" ;;
		--node-id) node_id=$2 ;;
		--label) labels="$labels $2" ;;
		--on-stop) on_stop=$2 ;;
		--agent-args) extra="$extra $2" ;;
		--unit) unit=$2 ;;
		--root) root=$2 ;;
		esac
		# Everything but the files and the token is passed on as is to a remote run.
		case "$1" in
		--binary | --unit | --token) ;;
		*) forward="$forward $1 $(quote "$2")" ;;
		esac
		shift 2
		;;
	--no-join)
		join=no forward="$forward --no-join"
		shift
		;;
	--no-start)
		start=no forward="$forward --no-start"
		shift
		;;
	--discover)
		discover=yes join=no forward="$forward --discover"
		shift
		;;
	-h | --help) usage && exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*)
		[ -z "$remote" ] || die "one user@host at a time (got $remote and $1)"
		remote=$1 && shift
		;;
	esac
done

[ -n "$binary" ] || die "missing --binary PATH (the starling binary to install)"
[ -f "$binary" ] || die "--binary $binary: no such file"
[ -f "$unit" ] || die "--unit $unit: no such file"
case "$on_stop" in leave | drain | stop) ;; *) die "--on-stop $on_stop: expected leave, drain or stop" ;; esac
for word in $seeds $labels $listen $advertise $node_id $extra; do
	case "$word" in *[\'\"\\\$\`]*) die "$word: quotes, backslashes and \$ are not allowed" ;; esac
done
for label in $labels; do
	case "$label" in ?*=*) ;; *) die "--label $label: expected KEY=VALUE" ;; esac
done
if [ "$token" = - ]; then
	IFS= read -r token || [ -n "$token" ] || die "--token -: nothing on stdin"
fi
[ "$discover" = no ] || [ -z "$token" ] || die "--discover and --token: pick one (a token joins at once; --discover waits to be admitted)"
case "$token" in *[[:space:]\'\"\\\$\`]*) die "--token: not a join token (spaces, quotes, \\ or \$ in it)" ;; esac

if [ -n "$remote" ]; then
	ssh=${STARLING_SSH:-ssh} scp=${STARLING_SCP:-scp}
	dir=$($ssh "$remote" 'mktemp -d /tmp/starling-install.XXXXXX') ||
		die "$remote: cannot reach it over ssh"
	$scp -q "$binary" "$remote:$dir/starling"
	$scp -q "$unit" "$remote:$dir/starling.service"
	$scp -q "$0" "$remote:$dir/install.sh"
	echo "$remote: files copied to $dir; installing there"
	sudo='$( [ "$(id -u)" -eq 0 ] || echo sudo )'
	rc=0
	printf '%s\n' "$token" | $ssh "$remote" \
		"cd $dir && $sudo sh ./install.sh --binary ./starling --unit ./starling.service --token - $forward; rc=\$?; rm -rf $dir; exit \$rc" ||
		rc=$?
	[ $rc -eq 0 ] || die "$remote: the install there failed (exit $rc; its messages are above)"
	exit 0
fi

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
	die "run as root to install under / (or stage with --root DIR)"
fi
data="$root/var/lib/starling"
if [ -z "$token" ] && [ "$join" = yes ] && [ ! -f "$data/cluster/node.pem" ]; then
	die "missing --token TOKEN (print one on a member: starling token create), or --no-join"
fi

# The binary goes in beside the old one and is renamed over it: a running agent keeps its
# file, and a device that loses power mid-copy never has half a binary.
install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system"
install -m 0755 "$binary" "$root/usr/local/bin/.starling.new"
mv -f "$root/usr/local/bin/.starling.new" "$root/usr/local/bin/starling"
install -m 0644 "$unit" "$root/etc/systemd/system/starling.service"
install -d -m 0700 "$root/etc/starling" "$data"

opts="--listen $listen --on-stop $on_stop"
[ -z "$advertise" ] || opts="$opts --advertise $advertise"
[ -z "$node_id" ] || opts="$opts --node-id $node_id"
for seed in $seeds; do opts="$opts --seed $seed"; done
for label in $labels; do opts="$opts --label $label"; done
for word in $extra; do opts="$opts $word"; done
[ "$discover" = no ] || opts="$opts --discover mdns"
# 0600 from the start: the token must never be readable by others, not even for a moment.
(
	umask 077
	cat >"$root/etc/starling/.agent.env.new" <<EOF
# Written by install.sh; read by starling.service (EnvironmentFile). Edit, then
# \`systemctl restart starling\`. The token is spent once the device has joined.
STARLING_JOIN_TOKEN=$token
STARLING_OPTS="$opts"
EOF
)
mv -f "$root/etc/starling/.agent.env.new" "$root/etc/starling/agent.env"
echo "installed $root/usr/local/bin/starling, $root/etc/systemd/system/starling.service, $root/etc/starling/agent.env"

if [ "$join" = yes ] && [ -n "$token" ]; then
	set -- join "$token" --data-dir "$data"
	[ -z "$node_id" ] || set -- "$@" --node-id "$node_id"
	[ -z "$advertise" ] || set -- "$@" --advertise "$advertise"
	"$root/usr/local/bin/starling" "$@" || die "starling join failed (the token may be spent or its seeds unreachable); nothing was started"
fi

if [ "$start" = no ]; then
	echo "not started (--no-start): systemctl enable --now starling"
elif [ -n "$root" ]; then
	systemctl --root="$root" enable starling.service
	echo "enabled under $root; it starts at the image's next boot"
else
	systemctl daemon-reload
	systemctl enable --now starling.service
	echo "started: STARLING_DATA_DIR=$data starling nodes"
fi
