#!/usr/bin/env bash
# Measures: a member that was down while 5 specs of ~0.98 MiB were written catches up after restart.
set -u
# Usage: cargo build --release && bash examples/bench/catchup.sh  (loopback ports 27946-27956)
B=${STARLING_BIN:-target/release/starling}
D=$(mktemp -d)
export STARLING_CLUSTER_DIR=$D/ops
$B init --data-dir $D/a --node-id a --advertise 127.0.0.1:27946 --cluster-dir $D/ops >/dev/null
$B agent --data-dir $D/a --listen 127.0.0.1:27946 2>$D/a.log & A=$!
sleep 1
for n in b c; do
  port=$([ $n = b ] && echo 27950 || echo 27954)
  tok=$($B token create --data-dir $D/a)
  $B agent --data-dir $D/$n --node-id $n --listen 127.0.0.1:$port --join "$tok" 2>$D/$n.log &
  eval "P_$n=$!"
done
sleep 4
kill -9 $P_c
for i in 0 1 2 3 4; do
  { printf 'name = "big-%s"\ncommand = "sleep"\nargs = ["60"]\nreplicas = 0\n[env]\n' $i
    for j in $(seq 1000); do printf 'VAR_%s = "%s"\n' $j "$(head -c 1000 /dev/zero | tr '\0' x)"; done; } > $D/big-$i.toml
  $B --peer 127.0.0.1:27946 apply -f $D/big-$i.toml >/dev/null
done
ls -la $D/big-0.toml | awk '{print "spec bytes:", $5}'
start=$(date +%s%N)
$B agent --data-dir $D/c --node-id c --listen 127.0.0.1:27954 2>>$D/c.log & P_c=$!
while :; do
  n=$($B --peer 127.0.0.1:27954 get workloads -o json 2>/dev/null | grep -o '"name":"big-' | wc -l)
  [ "$n" = 5 ] && break
  sleep 0.05
done
end=$(date +%s%N)
echo "restart -> all 5 held: $(( (end-start)/1000000 )) ms"
echo "failed pulls logged by the returning node: $(grep -c "anti-entropy pull failed" $D/c.log)"
kill $A $P_b $P_c; wait 2>/dev/null; rm -rf "$D"
