#!/usr/bin/env bash
# The main job on a built-in default: checkpoint the seed's shell loop (a shell counting
# once a second, with its `sleep` child), kill it, restore it, and watch it count on.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p criu-cli
criu=target/release/criu-rs
images=$(mktemp -d /tmp/criu-rs-demo.XXXXXX)
log=$images/loop.out

# A session of its own and only stdin/stdout/stderr open, like a daemon (whatever else
# this shell inherited, a CI agent's pipe say, is closed for it).
closers=""
for fd in /proc/$$/fd/*; do
    n=${fd##*/}
    if [ "$n" -gt 2 ]; then closers="$closers $n>&-"; fi
done
eval "setsid sh -c 'i=0; while true; do echo \$i; i=\$(expr \$i + 1); sleep 1; done' >\"\$log\" 2>&1 </dev/null $closers &"
loop=$!
trap 'kill -9 -- -$loop 2>/dev/null || true' EXIT
sleep 2.5

echo "== the loop (pid $loop) has printed: $(tr '\n' ' ' <"$log")"
echo "== criu-rs dump -t $loop -D $images --display-stats   (dumps, then kills the tree)"
$criu dump -t "$loop" -D "$images" --display-stats
echo "== criu-rs crit x $images ps"
$criu crit x "$images" ps
echo "== criu-rs crit x $images fds"
$criu crit x "$images" fds
sleep 1
echo "== after the dump the log stops at: $(tr '\n' ' ' <"$log")"
echo "== criu-rs restore -D $images -d --display-stats"
$criu restore -D "$images" -d --display-stats
sleep 2.5
echo "== restored, same pids:"
ps -o pid,ppid,pgid,sid,stat,cmd -g "$loop"
echo "== and counting on in the same file: $(tr '\n' ' ' <"$log")"
echo "== images are in $images"
