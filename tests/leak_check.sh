#!/usr/bin/env bash
# After the test suite: fail if it left /dev/shm entries (argument: the listing taken before)
# or procpy processes of this checkout behind, or redis-servers the cluster tests started.
# Processes get a few seconds to finish exiting.
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
# The cluster tests' redis-servers run in directories named procpy-redis-* (tests/all/common/
# redis.rs); a system redis-server (Debian's service, cwd /var/lib/redis) is not ours.
our_redis() {
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/exe" 2>/dev/null)" in */redis-server|*/redis-check-rdb) ;; *) continue ;; esac
        case "$(readlink "$p/cwd" 2>/dev/null)" in
            */procpy-redis-*) echo "${p#/proc/} redis-server in $(readlink "$p/cwd" 2>/dev/null)" ;;
        esac
    done
}
for _ in $(seq 10); do
    [ -z "$(ours)$(our_redis)" ] && break
    sleep 0.3
done
status=0
left=$(ours)
if [ -n "$left" ]; then
    echo "leak check: procpy processes left behind:" >&2
    printf '%s\n' "$left" >&2
    status=1
fi
left=$(our_redis)
if [ -n "$left" ]; then
    echo "leak check: redis-servers of the cluster tests left behind:" >&2
    printf '%s\n' "$left" >&2
    status=1
fi
new=$(comm -13 <(printf '%s\n' "$shm_before") <(ls -1 /dev/shm 2>/dev/null | sort))
if [ -n "$new" ]; then
    echo "leak check: new /dev/shm entries after the suite:" >&2
    printf '%s\n' "$new" >&2
    status=1
fi
[ $status -eq 0 ] && echo "leak check: no /dev/shm entries, procpy processes or test redis-servers left behind"
exit $status
