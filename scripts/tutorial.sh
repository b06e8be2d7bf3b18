#!/usr/bin/env bash
# The podman checkpoint tutorial, run with crpod on its built-in `host` image: a
# container counting once a second is checkpointed (and so stops), then restored, and
# counts on where it stopped. Each step shows its command and its output.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p container-cli
root=$(mktemp -d /tmp/crpod-tutorial.XXXXXX)
crpod() { target/release/crpod --root "$root" "$@"; }
step() {
    echo
    echo "\$ crpod $*"
    crpod "$@"
}
trap 'crpod rm -a -f >/dev/null 2>&1 || true; rm -rf "$root"' EXIT

step run -d --name looper host /bin/sh -c 'i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done'
sleep 3
step logs -l
step container checkpoint -l
step ps -a
step logs -l
echo "(checkpointed: nothing runs for 2 seconds)"
sleep 2
step container restore -l
sleep 3
step logs -l
step ps -a
step exec looper sh -c 'echo "inside: pid 1 is $(tr "\0" " " </proc/1/cmdline)"'
step kill -a
step rm -a
step ps -a
