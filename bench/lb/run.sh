#!/usr/bin/env bash
# mp-lb benchmark: the same h2load load through a direct call, nginx
# (grpc_pass), HAProxy (mode http, proto h2) and mp-lb, in front of the same 3
# echo backends, in one run; prints one table and mp-lb's ratios to HAProxy.
#
#   bench/lb/run.sh                 # installs what is missing (as root), builds, runs
#   ROUNDS=2 bench/lb/run.sh        # every target twice (numbers on a 2-core VM are noisy)
#   TARGETS="haproxy mp-lb" bench/lb/run.sh
#
# Knobs (environment): DURATION (5 s closed-loop saturation run, CLIENTS x
# STREAMS = 16 x 16), RATE (2000 req/s fixed-rate run for latency, RATE_SECS 5,
# RATE_CLIENTS 10 x RATE_STREAMS 8), PAYLOAD (100 bytes), PIN (auto: h2load on
# CPU 0, backends and proxies on the other CPUs; 0: no pinning), MP_LB_ARGS
# (extra mp-lb flags), BUILD (1: cargo build --release first), KEEP (1: keep
# the work dir with every log and h2load output).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-16}
STREAMS=${STREAMS:-16}
RATE=${RATE:-2000}
RATE_SECS=${RATE_SECS:-5}
RATE_CLIENTS=${RATE_CLIENTS:-10}
RATE_STREAMS=${RATE_STREAMS:-8}
PAYLOAD=${PAYLOAD:-100}
PIN=${PIN:-auto}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-direct nginx haproxy mp-lb}
MP_LB_ARGS=${MP_LB_ARGS:-}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

say() { echo "bench/lb: $*" >&2; }
die() { say "$*"; exit 2; }

# ---- tools -------------------------------------------------------------------
need=()
for t in h2load nghttp nginx haproxy taskset; do
  command -v "$t" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$t" >/dev/null 2>&1 || need+=("$t")
done
export PATH=$PATH:/usr/sbin
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing ${need[*]} (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client nginx haproxy util-linux; } >&2 ||
      die "apt-get install failed"
  else
    die "missing ${need[*]}: install nghttp2-client nginx haproxy util-linux (Debian), then rerun"
  fi
fi

# ---- build ---------------------------------------------------------------------
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET_DIR=${TARGET_DIR:-$ROOT/target}
if [[ $BUILD == 1 ]]; then
  say "building mp-lb and the echo backend (release)"
  (cd "$ROOT" && cargo build --release -q -p mp-lb --bin mp-lb --example echo_backend) || die "build failed"
fi
MP_LB=$TARGET_DIR/release/mp-lb
BACKEND=$TARGET_DIR/release/examples/echo_backend
[[ -x $MP_LB && -x $BACKEND ]] || die "missing $MP_LB or $BACKEND (run with BUILD=1)"

# ---- scratch dir, processes, cleanup ----------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mp-bench-lb.XXXXXX")
PIDS=()
kids() { local p; for p in "$@"; do pgrep -P "$p" 2>/dev/null; done; }
stop_pids() { # PIDS...: TERM, wait up to 3 s, KILL
  local all=("$@") p i
  all+=($(kids "$@"))
  kill -TERM "${all[@]}" 2>/dev/null
  for i in $(seq 30); do
    local alive=0
    for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL "${all[@]}" 2>/dev/null
  wait "${all[@]}" 2>/dev/null
}
cleanup() {
  trap - EXIT INT TERM
  ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
  if [[ $KEEP == 1 ]]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LOAD_CPU=(); SRV_CPU=()
if [[ $PIN != 0 ]] && (($(nproc) >= 2)); then
  LOAD_CPU=(taskset -c 0); SRV_CPU=(taskset -c "1-$(($(nproc) - 1))")
fi

is_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { local p; while :; do p=$((20000 + RANDOM % 30000)); is_open "$p" || { echo "$p"; return; }; done; }
wait_open() { # PORT PID
  local i; for i in $(seq 200); do
    is_open "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done; return 1
}
start() { # NAME CMD...: start pinned in the background; sets STARTED
  local name=$1; shift
  "${SRV_CPU[@]}" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  STARTED=$!; PIDS+=("$STARTED")
}

# ticks (utime+stime) and peak RSS (VmHWM, KiB) of a process and its children
ticks() { local s=0 p; for p in "$@" $(kids "$@"); do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $s; }
hwm() { local s=0 p; for p in "$@" $(kids "$@"); do s=$((s + $(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $s; }
HZ=$(getconf CLK_TCK)

# ---- the request: gRPC frame of EchoRequest{payload: PAYLOAD x 'x'} ----------------
BODY=$WORK/request.bin
python3 - "$PAYLOAD" "$BODY" <<'PY'
import struct, sys
n, path = int(sys.argv[1]), sys.argv[2]
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80); v >>= 7
    out.append(v); return bytes(out)
msg = b"\x0a" + varint(n) + b"x" * n
open(path, "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY
HDRS=(-H 'content-type: application/grpc' -H 'te: trailers')
PATH_SAY=/lbtest.echo.v1.Echo/Say

# ---- backends -------------------------------------------------------------------------
BPORTS=($(free_port) $(free_port) $(free_port))
BPIDS=()
for p in "${BPORTS[@]}"; do
  start "backend-$p" "$BACKEND" "$p"; BPIDS+=("$STARTED")
  wait_open "$p" "$STARTED" || die "backend on $p did not start: $(cat "$WORK/backend-$p.log")"
done
B=("127.0.0.1:${BPORTS[0]}" "127.0.0.1:${BPORTS[1]}" "127.0.0.1:${BPORTS[2]}")

# ---- proxies ------------------------------------------------------------------------------
nginx_conf() { # DIR PORT
  cat <<CONF
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    # h2load never reconnects: do not let nginx close busy client connections.
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    http2_max_concurrent_streams 1024;
    upstream backends {
        server ${B[0]};
        server ${B[1]};
        server ${B[2]};
        # nginx's grpc_pass carries one call per upstream connection: keep
        # enough idle ones for every stream in flight.
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }
    server {
        listen 127.0.0.1:$2 http2;
        location / { grpc_pass grpc://backends; }
    }
}
CONF
}
haproxy_conf() { # PORT
  cat <<CONF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend front
    bind 127.0.0.1:$1 proto h2
    default_backend backends
backend backends
    balance roundrobin
    http-reuse always
    server b1 ${B[0]} proto h2
    server b2 ${B[1]} proto h2
    server b3 ${B[2]} proto h2
CONF
}

launch() { # TARGET -> sets PORT and PID (empty PID for direct)
  local d=$WORK/$1; mkdir -p "$d"
  PID=
  case $1 in
    direct) PORT=${BPORTS[0]}; return 0 ;;
    nginx) PORT=$(free_port); nginx_conf "$d" "$PORT" >"$d/nginx.conf"
      start nginx nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" ;;
    haproxy) PORT=$(free_port); haproxy_conf "$PORT" >"$d/haproxy.cfg"
      start haproxy haproxy -db -f "$d/haproxy.cfg" ;;
    mp-lb) PORT=$(free_port)
      # shellcheck disable=SC2086
      start mp-lb "$MP_LB" --listen "127.0.0.1:$PORT" --backend "${B[0]}" --backend "${B[1]}" --backend "${B[2]}" $MP_LB_ARGS ;;
    *) die "unknown target $1 (direct nginx haproxy mp-lb)" ;;
  esac
  PID=$STARTED
  wait_open "$PORT" "$PID" || { say "$1 did not start:"; cat "$WORK/$1.log" "$d"/*.log >&2 2>/dev/null; return 1; }
  sleep 0.3 # let the proxy connect to its backends
}

h2stats() { # FILE -> "rps done ok"
  awk '
    /^finished in/ { rps = $4 }
    /^requests:/ { total = $2; done = $8; failed = $10; errored = $12; timeout = $14 }
    /^status codes:/ { s2xx = $3 }
    END { ok = (done > 0 && failed == 0 && errored == 0 && timeout == 0 && s2xx >= done) ? "ok" : "FAIL"
          printf "%s %d %s\n", (rps == "" ? 0 : rps), done, ok }' "$1"
}
percentiles() { # LOGFILE -> "p50 p99 p99.9" (ms)
  awk '{ print $3 }' "$1" | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "- - -"; exit }
    split("0.50 0.99 0.999", q, " ")
    for (i = 1; i <= 3; i++) { k = int(NR * q[i]); if (k < 1) k = 1; printf "%.2f ", v[k] / 1000 }
    print "" }'
}
us_per_req() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }'; }

RESULTS=$WORK/results.tsv
printf "target\tcheck\tsat_rps\trate_rps\tp50_ms\tp99_ms\tp99.9_ms\tcpu_us/req@sat\tcpu_us/req@rate\tpeak_rss_MiB\tbackend_split\n" >"$RESULTS"

bench_one() { # TARGET ROUND
  local t=$1 label=$1 check
  ((ROUNDS > 1)) && label+="#$2"
  launch "$t" || { printf "%s\tSTART_FAILED\n" "$label" >>"$RESULTS"; return; }
  local url="http://127.0.0.1:$PORT$PATH_SAY" d=$WORK/$t
  say "$label on port $PORT${PID:+ (pid $PID)}"

  # Correct answers: grpc-status 0 in the trailers, the payload echoed.
  if timeout 5 nghttp -v -d "$BODY" "${HDRS[@]}" "$url" 2>&1 | grep -aq 'grpc-status: 0'; then check=grpc-ok; else check=GRPC-FAIL; fi

  # Saturation: closed loop.
  local c0 c1 sat bt0 bt1
  c0=$([[ -n $PID ]] && ticks "$PID" || echo 0)
  timeout $((DURATION + 30)) "${LOAD_CPU[@]}" h2load -D "$DURATION" -c "$CLIENTS" -m "$STREAMS" -t 1 \
    -d "$BODY" "${HDRS[@]}" "$url" >"$d/h2load-sat.txt" 2>&1
  c1=$([[ -n $PID ]] && ticks "$PID" || echo 0)
  sat=($(h2stats "$d/h2load-sat.txt"))
  local cpu_sat=-; [[ -n $PID ]] && cpu_sat=$(us_per_req $((c1 - c0)) "${sat[1]}")
  sleep 0.5

  # Fixed rate: latency percentiles.
  local per_client=$(((RATE + RATE_CLIENTS - 1) / RATE_CLIENTS)) rate
  bt0=(); for p in "${BPIDS[@]}"; do bt0+=($(ticks "$p")); done
  c0=$([[ -n $PID ]] && ticks "$PID" || echo 0)
  timeout $((RATE_SECS * 4 + 30)) "${LOAD_CPU[@]}" h2load -n $((RATE * RATE_SECS)) -c "$RATE_CLIENTS" -m "$RATE_STREAMS" -t 1 \
    --rps "$per_client" -r 1 --rate-period 1ms --log-file "$d/latency.log" \
    -d "$BODY" "${HDRS[@]}" "$url" >"$d/h2load-rate.txt" 2>&1
  c1=$([[ -n $PID ]] && ticks "$PID" || echo 0)
  bt1=(); for p in "${BPIDS[@]}"; do bt1+=($(ticks "$p")); done
  rate=($(h2stats "$d/h2load-rate.txt"))
  local pct=($(percentiles "$d/latency.log"))
  local cpu_rate=- rss=- split
  if [[ -n $PID ]]; then
    cpu_rate=$(us_per_req $((c1 - c0)) "${rate[1]}")
    rss=$(awk -v k="$(hwm "$PID")" 'BEGIN { printf "%.1f", k / 1024 }')
  fi
  local b0=$((bt1[0] - bt0[0])) b1=$((bt1[1] - bt0[1])) b2=$((bt1[2] - bt0[2]))
  split=$(awk -v a=$b0 -v b=$b1 -v c=$b2 'BEGIN { s = a + b + c; if (s == 0) s = 1; printf "%d/%d/%d", 100*a/s, 100*b/s, 100*c/s }')
  [[ ${sat[2]} == ok && ${rate[2]} == ok ]] || check+=",H2LOAD-ERRORS"
  printf "%s\t%s\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$label" "$check" "${sat[0]}" "${rate[0]}" \
    "${pct[0]}" "${pct[1]}" "${pct[2]}" "$cpu_sat" "$cpu_rate" "$rss" "$split" >>"$RESULTS"
  if [[ -n $PID ]]; then stop_pids "$PID"; fi
  sleep 0.5
}

steal() { awk '/^cpu /{ t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9 }' /proc/stat; }
S0=($(steal)); T0=$(date +%s)
say "cpus $(nproc), pin ${LOAD_CPU[*]:-none} (h2load) / ${SRV_CPU[*]:-none} (servers); saturation -D $DURATION -c $CLIENTS -m $STREAMS; rate $RATE req/s x ${RATE_SECS}s; payload $PAYLOAD B"
for r in $(seq "$ROUNDS"); do for t in $TARGETS; do bench_one "$t" "$r"; done; done
S1=($(steal))

echo
column -t -s $'\t' "$RESULTS" 2>/dev/null || cat "$RESULTS"
cat <<EOF

sat_rps: closed loop, h2load -D $DURATION -c $CLIENTS -m $STREAMS. rate_rps, p50/p99/p99.9: fixed $RATE req/s for ${RATE_SECS}s (-c $RATE_CLIENTS -m $RATE_STREAMS).
cpu_us/req: the proxy's process tree CPU (utime+stime, $HZ Hz ticks) per completed call. peak_rss_MiB: summed VmHWM of that tree.
backend_split: share of backend CPU during the rate run. check: grpc-status 0 seen (nghttp); H2LOAD-ERRORS if any call failed.
EOF
awk -v t=$((S1[0] - S0[0])) -v s=$((S1[1] - S0[1])) -v secs=$(($(date +%s) - T0)) \
  'BEGIN { printf "run time %d s; CPU steal %.1f%% (above a few %% the numbers are noisy: rerun)\n", secs, t ? 100 * s / t : 0 }'

# mp-lb against HAProxy, averaged over rounds, with the targets.
awk -F'\t' '
  NR > 1 { name = $1; sub(/#.*/, "", name); n[name]++
           sat[name] += $3; p99[name] += $6; cs[name] += $8; cr[name] += $9; if ($10 + 0 > rss[name]) rss[name] = $10 + 0 }
  END {
    if (!n["haproxy"] || !n["mp-lb"]) exit
    h = "haproxy"; m = "mp-lb"
    r1 = (sat[m] / n[m]) / (sat[h] / n[h]); r2 = (cs[m] / n[m]) / (cs[h] / n[h]); r3 = (cr[m] / n[m]) / (cr[h] / n[h])
    r4 = (p99[m] / n[m]) / (p99[h] / n[h])
    printf "\nmp-lb vs HAProxy (targets):\n"
    printf "  saturation throughput  %.2fx  (>= 1.25x) %s\n", r1, (r1 >= 1.25 ? "met" : "MISSED")
    printf "  CPU/req at saturation  %.2fx  (<= 0.80x) %s\n", r2, (r2 <= 0.8 ? "met" : "MISSED")
    printf "  CPU/req at fixed rate  %.2fx  (<= 0.80x) %s\n", r3, (r3 <= 0.8 ? "met" : "MISSED")
    printf "  p99 at fixed rate      %.2fx  (<= 1.00x) %s\n", r4, (r4 <= 1.0 ? "met" : "MISSED")
    printf "  peak RSS               %.1f MiB (<= 12 MiB) %s\n", rss[m], (rss[m] <= 12 ? "met" : "MISSED")
  }' "$RESULTS"
