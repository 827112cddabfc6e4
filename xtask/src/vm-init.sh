#!/bin/busybox sh
# PID 1 of the `cargo xtask vm-test` guest (busybox sh). It loads the kernel
# modules xtask packed, runs tcpmon in every attach mode on loopback and on a
# veth pair between two network namespaces while busybox wget fetches a file
# from busybox httpd and knocks on a closed port, and checks tcpmon's JSON;
# then the other views' kernel paths: stat's interval counters and peek's
# handshake events.
# Every check prints one `vm-test: PASS ...` or `vm-test: FAIL ...` line on
# the serial console; the last line is `vm-test: done ...`, then it powers
# off. xtask reads the console.

export PATH=/usr/local/sbin:/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf

# Debian's busybox shell runs its own applets before searching PATH, and
# busybox's ip cannot make veth pairs or namespaces: iproute2's, by path.
ip() { /usr/local/sbin/ip "$@"; }

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "vm-test: PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "vm-test: FAIL $*"; }
finish() {
    echo "vm-test: done: $PASSED checks passed, $FAILED failed"
    sync
    poweroff -f
}
# Seconds since boot, for timings in the log.
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# took CASE START: how long a case took, in the log.
took() { echo "vm-test: $1: took $(awk "BEGIN { print $(uptime_s) - $2 }")s"; }
# fetch CASE URL: an HTTP GET that must work.
fetch() { wget -q -O /dev/null "$2" || fail "$1: HTTP fetch from $2 failed"; }
# indent FILE...: files quoted under a FAIL line.
indent() { sed 's/^/    /' "$@"; }
# stop SIGNAL PID: signals tcpmon and waits for it; its status is $?.
stop() { kill "-$1" "$2"; wait "$2"; }

release=$(uname -r)
echo "vm-test: kernel $release, $(nproc) CPUs, uptime $(uptime_s)s"

# Modules, dependencies first (xtask worked out the order).
for m in $(cat /modules/order); do
    if insmod "/modules/$m.ko"; then
        pass "module $m loaded"
    else
        fail "module $m: insmod failed"
    fi
done

# tcx came with Linux 6.6; before it TC programs hang off a clsact qdisc.
major=${release%%.*}
minor=${release#*.}
minor=${minor%%[!0-9]*}
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 6 ]; }; then
    TC_PATH="tcx"
else
    TC_PATH="netlink clsact"
fi

mkdir -p /www /run/netns
dd if=/dev/zero of=/www/big bs=1024 count=1024 2>/dev/null
echo hello >/www/small
BIG=$(wc -c </www/big)

ip link set lo up
httpd -p 8080 -h /www

# A server namespace joined to this one by a veth pair.
if ip netns add srv &&
    ip link add veth-c type veth peer name veth-s &&
    ip link set veth-s netns srv &&
    ip addr add 10.9.0.1/24 dev veth-c &&
    ip -6 addr add fd00:9::1/64 dev veth-c nodad &&
    ip link set veth-c up &&
    ip -n srv addr add 10.9.0.2/24 dev veth-s &&
    ip -n srv -6 addr add fd00:9::2/64 dev veth-s nodad &&
    ip -n srv link set veth-s up &&
    ip -n srv link set lo up &&
    ip netns exec srv httpd -p 8080 -h /www; then
    pass "veth pair between two namespaces"
    VETH=1
else
    fail "veth pair between two namespaces: setup failed"
    VETH=0
fi

FILTER=
# One JSON field of one line: strings keep their quotes.
field() { echo "$2" | sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p"; }

# check_conn CASE SERVER STATE MIN_BYTES_TO_CLIENT
check_conn() {
    lines=$(grep -cF "\"server\":\"$2\"" "/tmp/$1.json")
    line=$(grep -F "\"server\":\"$2\"" "/tmp/$1.json" | tail -n 1)
    state=$(field state "$line")
    pts=$(field packets_to_server "$line")
    ptc=$(field packets_to_client "$line")
    btc=$(field bytes_to_client "$line")
    if [ "$lines" = 1 ] && [ "$state" = "\"$3\"" ] && [ "${pts:-0}" -gt 0 ] &&
        [ "${ptc:-0}" -gt 0 ] && [ "${btc:-0}" -ge "$4" ]; then
        pass "$1: $2 $3, packets $pts/$ptc, bytes to client $btc"
    else
        fail "$1: $2: wanted one $3 connection with packets both ways and >= $4 bytes" \
            "to the client; got $lines: ${line:-none}"
    fi
}

# wait_watching CASE PID ERRFILE: until tcpmon says it is watching (true),
# or it died or took too long (a FAIL with its stderr, false).
wait_watching() {
    n=0
    while ! grep -q "watching" "$3"; do
        n=$((n + 1))
        if ! kill -0 "$2" 2>/dev/null || [ "$n" -gt 1200 ]; then
            fail "$1: tcpmon did not start watching:"
            indent "$3"
            kill "$2" 2>/dev/null
            wait "$2"
            return 1
        fi
        sleep 0.1
    done
}

# run_case CASE IFACE XDP SERVER_URL_HOST SERVER_JSON_HOST [SERVER6]
run_case() {
    name=$1 iface=$2 xdp=$3 url_host=$4 json_host=$5 v6=$6
    out=/tmp/$name.json err=/tmp/$name.err
    start=$(uptime_s)
    failed_before=$FAILED
    # $FILTER unquoted: its words are the filter expression's.
    # shellcheck disable=SC2086
    TCPMON_LIBPCAP=/usr/local/lib/libpcap.so.0.8 \
        tcpmon top --json -i "$iface" --xdp "$xdp" --duration 150 $FILTER >"$out" 2>"$err" &
    pid=$!
    wait_watching "$name" "$pid" "$err" || return
    echo "vm-test: $name: tcpmon watching after $(uptime_s)s (started at ${start}s):"
    indent "$err"
    if [ "$iface" = lo ] && [ "$xdp" != off ]; then
        # Loopback sends and receives every packet itself: with XDP asked
        # for, tcpmon uses that hook alone, so no TC at all.
        if grep -q "attached TC" "$err"; then
            fail "$name: TC attached on lo beside XDP (packets would count twice)"
        else
            pass "$name: XDP alone on lo"
        fi
    elif grep -q "attached TC .* with $TC_PATH" "$err" &&
        ! grep "attached TC" "$err" | grep -vq "with $TC_PATH"; then
        pass "$name: TC attached with $TC_PATH"
    else
        fail "$name: TC not attached with $TC_PATH (see tcpmon's lines above)"
    fi

    rm -f /tmp/got
    if wget -q -O /tmp/got "http://$url_host:8080/big" && [ "$(wc -c </tmp/got)" = "$BIG" ]; then
        pass "$name: fetched $BIG bytes over HTTP"
    else
        fail "$name: HTTP fetch from $url_host:8080 failed"
    fi
    if wget -q -O /dev/null "http://$url_host:8081/" 2>/dev/null; then
        fail "$name: port 8081 answered; it should refuse"
    fi
    if [ -n "$v6" ]; then
        fetch "$name" "http://[$v6]:8080/small"
    fi
    sleep 1
    stop TERM "$pid"
    rc=$?
    if [ "$rc" = 0 ]; then
        pass "$name: tcpmon exited cleanly on SIGTERM ($(wc -l <"$out") connections)"
    else
        fail "$name: tcpmon exited with status $rc:"
        indent "$err"
    fi
    # Nothing may stay attached: an XDP program would show in ip link, and a
    # clsact filter left by the previous case would have made this tcpmon
    # warn that it removed it.
    if ip link show dev "$iface" | grep -q xdp; then
        fail "$name: an XDP program is still attached to $iface after tcpmon exited"
    elif grep -q "left on" "$err"; then
        fail "$name: the previous tcpmon left a filter on $iface"
    else
        pass "$name: nothing left attached to $iface"
    fi
    check_conn "$name" "$json_host:8080" CLOSED "$BIG"
    if [ -z "$FILTER" ]; then
        check_conn "$name" "$json_host:8081" RESET 0
    elif grep -qF "\"server\":\"$json_host:8081\"" "$out"; then
        fail "$name: the filter '$(echo "$FILTER" | cut -c1-40)' let the connection to 8081 through"
    else
        pass "$name: the filter '$(echo "$FILTER" | cut -c1-40)' kept the connection to 8081 out"
    fi
    if [ -n "$v6" ]; then
        check_conn "$name" "[$v6]:8080" CLOSED 6
    fi
    if [ "$FAILED" != "$failed_before" ]; then
        echo "vm-test: $name: tcpmon's output:"
        indent "$out"
    fi
    took "$name" "$start"
}

# stat -i on the veth pair: the kernel's interval counters add up to at
# least the fetched file's bytes, in lines printed on the clock.
run_stat() {
    name=veth-stat out=/tmp/stat.out err=/tmp/stat.err
    start=$(uptime_s)
    tcpmon stat -i veth-c -o '%n %N\n' 1 >"$out" 2>"$err" &
    pid=$!
    wait_watching "$name" "$pid" "$err" || return
    fetch "$name" "http://10.9.0.2:8080/big"
    sleep 2
    stop INT "$pid"
    rc=$?
    sums=$(awk '{ p += $1; b += $2 } END { print NR, p + 0, b + 0 }' "$out")
    set -- $sums
    if [ "$rc" = 0 ] && [ "$1" -ge 2 ] && [ "$2" -ge 30 ] && [ "$3" -ge "$BIG" ]; then
        pass "$name: $1 interval lines, $2 packets, $3 bytes"
    else
        fail "$name: wanted status 0, 2+ lines, 30+ packets, $BIG+ bytes; got status $rc," \
            "lines/packets/bytes $sums:"
        indent "$out" "$err"
    fi
    took "$name" "$start"
}

# peek -i on the veth pair: one line per handshake, with its outcome.
run_peek() {
    name=veth-peek err=/tmp/peek.err
    start=$(uptime_s)
    tcpmon peek -i veth-c -t 5 -U /tmp/peek.sock >/dev/null 2>"$err" &
    pid=$!
    wait_watching "$name" "$pid" "$err" || return
    # Each step says when it is done, so that a run the host's timeout
    # kills shows in the console log where it stopped.
    echo "vm-test: $name: tcpmon watching after $(uptime_s)s (started at ${start}s)," \
        "$(awk '/MemAvailable/ {print $2}' /proc/meminfo) KiB available"
    timeout 30 wget -q -O /dev/null "http://10.9.0.2:8080/small"
    timeout 30 wget -q -O /dev/null "http://10.9.0.2:8081/" 2>/dev/null
    timeout 30 wget -q -O /dev/null "http://[fd00:9::2]:8080/small"
    sleep 1
    echo "vm-test: $name: connections done at $(uptime_s)s; stopping tcpmon"
    stop INT "$pid"
    rc=$?
    for want in "10.9.0.2:8080 .*| *success" "10.9.0.2:8081 .*| failure (reject)" \
        "\[fd00:9::2\]:8080 .*| *success"; do
        if [ "$rc" = 0 ] && [ "$(grep -c "$want" "$err")" = 1 ]; then
            pass "$name: one line matching '$want'"
        else
            fail "$name: wanted one line matching '$want' and status 0 (got $rc):"
            indent "$err"
        fi
    done
    took "$name" "$start"
}

# Loopback: TC both ways, then XDP (generic: lo has no native XDP).
run_case lo-tc lo off 127.0.0.1 127.0.0.1
run_case lo-xdp-skb lo skb 127.0.0.1 127.0.0.1
if [ "$VETH" = 1 ]; then
    run_case veth-tc veth-c off 10.9.0.2 10.9.0.2 fd00:9::2
    run_case veth-xdp-native veth-c native 10.9.0.2 10.9.0.2 fd00:9::2
    run_case veth-xdp-skb veth-c skb 10.9.0.2 10.9.0.2 fd00:9::2
    # The filter's translation and the tail calls around it, on both hooks:
    # XDP takes ingress, TC egress. Then a long one: 211 ports, 1,035
    # classic instructions with Debian's libpcap (`tcpdump -d`).
    FILTER="tcp port 8080" run_case veth-xdp-filter veth-c native 10.9.0.2 10.9.0.2 fd00:9::2
    LONG="tcp port 8080"
    i=0
    while [ $i -lt 210 ]; do
        LONG="$LONG or tcp port $((9000 + i))"
        i=$((i + 1))
    done
    FILTER="$LONG" run_case veth-tc-long-filter veth-c off 10.9.0.2 10.9.0.2 fd00:9::2
    run_stat
    run_peek
fi

finish
