#!/usr/bin/env bash
# The main job on a built-in default: checkpoint the seed's shell loop (a shell counting
# once a second, with its `sleep` child) and show what was saved. Until restore lands the
# loop is dumped with --leave-running and killed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p criu-cli
criu=target/release/criu-rs
images=$(mktemp -d /tmp/criu-rs-demo.XXXXXX)
log=$images/loop.out

setsid sh -c 'i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done' >"$log" 2>&1 </dev/null &
loop=$!
trap 'kill -9 -- -$loop 2>/dev/null || true' EXIT
sleep 2.5

echo "== the loop (pid $loop) has printed: $(tr '\n' ' ' <"$log")"
echo "== criu-rs dump -t $loop -D $images -R --display-stats"
$criu dump -t "$loop" -D "$images" -R --display-stats
echo "== criu-rs crit x $images ps"
$criu crit x "$images" ps
echo "== criu-rs crit x $images fds"
$criu crit x "$images" fds
echo "== criu-rs crit x $images mems (first lines)"
$criu crit x "$images" mems | head -12
echo "== criu-rs crit show $images/pstree.img"
$criu crit show "$images/pstree.img"
sleep 1.5
echo "== still counting after the dump: $(tr '\n' ' ' <"$log")"
echo "== images are in $images"
