# kubemr executor: runs a worker's commands in the user's container (sidecar mode).
#
# Usage: sh executor.sh X        (X: the directory shared with the kubemr sidecar)
#
# In sidecar mode the user's image needs nothing but /bin/sh: this script is
# its entrypoint, and the kubemr sidecar (which claims tasks and talks to S3)
# hands it one command at a time through X. POSIX sh only; it runs under
# busybox sh, dash and bash.
#
# Files in X (the installer, kubemr.shim.exchange.install, creates the first
# four before this script starts):
#   executor.sh    this script
#   control        FIFO of requests, one line each (see below)
#   tick           FIFO nobody writes: `read -t` on it is a sleep without `sleep`
#   req/           one directory per command, made by the sidecar's bridge
#   image-env/     written here at start: NAME holds the exact value of each of
#                  KUBEMR_MAP, KUBEMR_COMBINE, KUBEMR_REDUCE set in this container
#   ready          written here once listening; holds this shell's pid
#
# The handshake, for one command (the bridge is kubemr/shim/bridge.py):
#   1. the bridge makes req/ID/ with `script` (cd to the task's directory,
#      export the task's variables, exec /bin/sh -c COMMAND) and the FIFOs
#      `in`, `out`, `err`; it opens `out` and `err` for reading, then writes
#      `run ID` to control and opens `in` for writing.
#   2. this script starts a runner in the background. The runner opens `err`
#      and `out` and keeps them open until it has written the exit code, then
#      starts `sh script <in >out 2>err` in a process group of its own and
#      writes that group's id to req/ID/pid. (An executor that starts finds
#      pids without codes from an earlier one, whose container restarted: it
#      empties those pid files, since the numbers may be anyone's by now.)
#   3. the bridge copies its stdin to `in`, `out` to its stdout, `err` to its
#      stderr. When the command exits, the runner SIGKILLs what is left of its
#      group (a finished command's `cmd &` must not keep the FIFOs open),
#      writes the exit status (128+N if killed by signal N) to req/ID/code and
#      exits, which closes `out` and `err`. So EOF on both means `code` is
#      complete, and EOF without a `code` means this executor died.
#   4. the bridge exits with that code and removes req/ID.
#
# Requests on control:
#   run ID          start req/ID/script as above
#   kill ID SIG     send SIG (TERM, KILL, INT, HUP, QUIT, USR1, USR2) to the command's group
#   exit CODE       stop every running command (TERM, a moment, KILL), exit CODE
# SIGTERM, SIGINT or SIGHUP to this shell (pod deletion; it may be PID 1 of its
# container) does the same as `exit 143`.
#
# Process groups: `set -m` gives background jobs groups of their own only when
# the shell has a terminal, which a container does not, and no builtin calls
# setpgid. So a command is started with `setsid` (util-linux or busybox; in
# practically every image that has /bin/sh) when there is one. Without it,
# the command and everything it starts carry KUBEMR_REQ=/ID/ in their
# environment, and signalling the "group" means signalling every process in
# /proc whose environment has that tag. Everything else is builtins only;
# `sleep` is used for a short pause only if `read -t` is missing (dash) and
# is optional even then.

X=${1:?usage: sh executor.sh EXCHANGE_DIRECTORY}
REQ=$X/req

log() {
    printf 'kubemr executor: %s\n' "$*" >&2
}

if [ ! -p "$X/control" ] || [ ! -d "$REQ" ] || [ ! -d "$X/image-env" ]; then
    log "$X is not prepared (no control FIFO, req/ or image-env/); kubemr's installer must run first"
    exit 2
fi
exec 3<>"$X/control" || exit 2

if command -v setsid >/dev/null 2>&1; then
    groups=setsid
else
    groups=proc
fi

if [ -p "$X/tick" ] && { (read -t 0.01 _ <>"$X/tick") 2>/dev/null; [ $? -ne 2 ]; }; then
    pause_with=read
elif command -v sleep >/dev/null 2>&1; then
    pause_with=sleep
else
    pause_with=spin
fi

# pause: wait about a tenth of a second.
pause() {
    case $pause_with in
        read) read -t 0.1 _ <>"$X/tick" ;;
        sleep) sleep 0.1 ;;
        *)
            i=0
            while [ "$i" -lt 20000 ]; do i=$((i + 1)); done
            ;;
    esac
}

# signal_tagged SIG ID: SIG to every process whose environment carries ID's tag.
signal_tagged() {
    for f in /proc/[0-9]*/environ; do
        p=${f#/proc/}
        p=${p%/environ}
        # environ has no final newline; NUL bytes are dropped by read.
        while IFS= read -r line || [ -n "$line" ]; do
            case $line in
                *"KUBEMR_REQ=/$2/"*)
                    kill "-$1" "$p" 2>/dev/null
                    break
                    ;;
            esac
        done 2>/dev/null <"$f"
    done
}

# signal_group SIG ID PID: SIG to the command started for ID as PID, and to all it started.
signal_group() {
    case $3 in
        '' | *[!0-9]* | 0 | 1 | "$$") return ;; # `kill -KILL -1` would be everything
    esac
    if [ "$groups" = setsid ]; then
        # Before setsid has run, the group does not exist yet: the pid is enough then.
        kill "-$1" "-$3" 2>/dev/null || kill "-$1" "$3" 2>/dev/null
    else
        kill "-$1" "$3" 2>/dev/null
        signal_tagged "$1" "$2"
    fi
}

# running ID: true if ID's command has started and not finished; sets $pid.
running() {
    pid=
    [ -e "$REQ/$1/code" ] && return 1
    read -r pid 2>/dev/null <"$REQ/$1/pid"
    [ -n "$pid" ] && [ ! -e "$REQ/$1/code" ]
}

# request_signal ID SIG: the `kill` request.
request_signal() {
    if running "$1"; then
        signal_group "$2" "$1" "$pid"
        return
    fi
    [ -e "$REQ/$1/code" ] && return
    # Not started yet: leave the signal for the runner, which looks after writing pid.
    printf '%s\n' "$2" 2>/dev/null >"$REQ/$1/signal"
    running "$1" && signal_group "$2" "$1" "$pid"
}

# run ID: the runner, started in the background for the `run` request.
run() {
    d=$REQ/$1
    # fd 3 is control: only the executor may hold it, so that when the executor
    # dies the bridges see that nobody reads it. The runner holds `err` (fd 5)
    # and `out` (fd 6) until it has written the code, so the bridge sees both
    # end then, even for a command killed before it opened anything. They are
    # opened for writing only (a command whose bridge stopped reading gets
    # SIGPIPE, as with sh -c) but behind a read-write open, which never blocks:
    # should the bridge be gone already, nothing waits for a reader that never
    # comes. The runner's own stderr (shells report "Killed" from `wait`) goes
    # nowhere, so the command's stderr is the command's alone.
    exec 3<&- </dev/null >/dev/null 2>/dev/null \
        4<>"$d/err" 5>"$d/err" 4<>"$d/out" 6>"$d/out" 4<&- || exit 1
    if [ "$groups" = setsid ]; then
        setsid /bin/sh "$d/script" <"$d/in" >&6 2>&5 5>&- 6>&- &
    else
        KUBEMR_REQ=/$1/ /bin/sh "$d/script" <"$d/in" >&6 2>&5 5>&- 6>&- &
    fi
    child=$!
    echo "$child" >"$d/pid"
    if [ -e "$d/signal" ]; then
        read -r sig <"$d/signal"
        signal_group "$sig" "$1" "$child"
    fi
    wait "$child"
    code=$?
    signal_group KILL "$1" "$child"
    echo "$code" >"$d/code"
    exit 0
}

# stop CODE: TERM every running command, give them a moment, KILL what is left, exit CODE.
stop() {
    trap '' TERM INT HUP
    for d in "$REQ"/*/; do
        id=${d%/}
        id=${id##*/}
        running "$id" && signal_group TERM "$id" "$pid"
    done
    rounds=0
    while [ "$rounds" -lt 20 ]; do
        left=
        for d in "$REQ"/*/; do
            id=${d%/}
            id=${id##*/}
            running "$id" && left=1
        done
        [ -z "$left" ] && break
        pause
        rounds=$((rounds + 1))
    done
    for d in "$REQ"/*/; do
        id=${d%/}
        id=${id##*/}
        running "$id" && signal_group KILL "$id" "$pid"
    done
    exit "$1"
}

trap 'stop 143' TERM INT HUP

# Requests started by an earlier executor on this directory (the container restarted)
# never get a code; their pids may belong to someone else by now: forget them.
for d in "$REQ"/*/; do
    if [ -s "$d/pid" ] && [ ! -e "$d/code" ]; then
        printf '' 2>/dev/null >"$d/pid"
    fi
done

for name in KUBEMR_MAP KUBEMR_COMBINE KUBEMR_REDUCE; do
    if eval "[ -n \"\${$name+set}\" ]"; then
        eval "printf '%s' \"\$$name\"" >"$X/image-env/$name"
    fi
done
log "listening on $X/control (process groups: $groups, pauses: $pause_with)"
echo "$$" >"$X/ready"

while :; do
    verb=
    id=
    arg=
    read -r verb id arg <&3 || continue
    case $id in
        *[!A-Za-z0-9_.-]* | .* ) log "ignored a request with a malformed id: $verb $id"; continue ;;
    esac
    case $verb in
        run)
            [ -n "$id" ] && [ -f "$REQ/$id/script" ] && run "$id" &
            ;;
        kill)
            case $arg in
                TERM | KILL | INT | HUP | QUIT | USR1 | USR2) request_signal "$id" "$arg" ;;
                *) log "ignored a kill request with signal '$arg'" ;;
            esac
            ;;
        exit)
            case $id in
                '' | *[!0-9]*) stop 0 ;;
                *) stop "$id" ;;
            esac
            ;;
        '') ;;
        *) log "ignored an unknown request: $verb" ;;
    esac
done
