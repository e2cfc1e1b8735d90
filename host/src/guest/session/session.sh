# A shell session in the guest, run by bash as one long job by
# `vmhost::session`. Steps arrive on stdin as `<kind> <length>` lines and
# that many bytes of code; each runs in this shell (`eval`), so cd, export,
# variables and functions persist. `push` adds one line and runs once what
# was pushed parses as complete. After each step both streams get the marker
# NUL <nonce>:<status> NUL. SIGINT interrupts the running step only.
__pid1_nonce=$PID1_SESSION
unset PID1_SESSION
# The steps come on descriptor 9; the code running in them reads /dev/null.
exec 9<&0 0</dev/null
trap : INT
__pid1_pending=
while LC_ALL=C IFS=' ' read -r -u 9 __pid1_kind __pid1_len; do
    __pid1_code=
    if [ "$__pid1_len" -gt 0 ]; then
        LC_ALL=C IFS= read -r -u 9 -d '' -N "$__pid1_len" __pid1_code
    fi
    if [ "$__pid1_kind" = push ]; then
        __pid1_pending+="$__pid1_code"$'\n'
        if ! __pid1_check=$(bash -n -c "$__pid1_pending" 2>&1) && [[ $__pid1_check == *"unexpected end of file"* ]]; then
            printf '\0%s:more\0' "$__pid1_nonce"
            printf '\0%s:more\0' "$__pid1_nonce" >&2
            continue
        fi
        __pid1_code=$__pid1_pending
        __pid1_pending=
    fi
    eval "$__pid1_code"
    __pid1_status=$?
    printf '\0%s:%d\0' "$__pid1_nonce" "$__pid1_status"
    printf '\0%s:%d\0' "$__pid1_nonce" "$__pid1_status" >&2
done
