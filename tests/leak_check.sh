#!/usr/bin/env bash
# After the test suite: fail if it left /dev/shm entries (argument: the listing taken before)
# or procpy processes of this checkout behind. Processes get a few seconds to finish exiting.
set -uo pipefail
cd "$(dirname "$0")/.."
shm_before=${1:-}
bin="$PWD/target/debug/procpy"
# By executable, not command line: spawned children re-execute /proc/self/exe.
ours() {
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$bin" ] && echo "${p#/proc/} $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)"
    done
}
for _ in $(seq 10); do
    [ -z "$(ours)" ] && break
    sleep 0.3
done
status=0
left=$(ours)
if [ -n "$left" ]; then
    echo "leak check: procpy processes left behind:" >&2
    printf '%s\n' "$left" >&2
    status=1
fi
new=$(comm -13 <(printf '%s\n' "$shm_before") <(ls -1 /dev/shm 2>/dev/null | sort))
if [ -n "$new" ]; then
    echo "leak check: new /dev/shm entries after the suite:" >&2
    printf '%s\n' "$new" >&2
    status=1
fi
[ $status -eq 0 ] && echo "leak check: no /dev/shm entries or procpy processes left behind"
exit $status
