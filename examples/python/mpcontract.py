"""What the Python examples share: the mp.v1 contract compiled at start from
proto/ with grpcio-tools (never checked in), the MP_* environment, and serving
with health, reflection and a graceful shutdown, as the Rust SDK does.
"""

import atexit
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = logging.getLogger("mp")

HERE = os.path.dirname(os.path.abspath(__file__))
# The one .proto source of truth, at the repository root; MP_PROTO_PATH
# overrides it when the examples are copied elsewhere.
PROTO_DIR = os.environ.get("MP_PROTO_PATH") or os.path.join(HERE, "..", "..", "proto")

# Mergers receive every leaf's reply in one message: allow more than 4 MiB.
MAX_MESSAGE = 16 << 20


def _compile():
    """Generates mp_pb2/mp_pb2_grpc into a private temp dir and imports them.

    A temp dir per process, so ten leaves starting at once never race on
    half-written files; it is removed at exit.
    """
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="mp-proto-")
    atexit.register(shutil.rmtree, out, True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_DIR,
        "-I" + well_known,
        "--python_out=" + out,
        "--grpc_python_out=" + out,
        "mp/v1/mp.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit(f"cannot compile {PROTO_DIR}/mp/v1/mp.proto (set MP_PROTO_PATH?)")
    sys.path.insert(0, out)
    from mp.v1 import mp_pb2, mp_pb2_grpc  # noqa: E402  (generated just now)

    return mp_pb2, mp_pb2_grpc


pb, pb_grpc = _compile()


class Env:
    """This process's place in its topology (MP_SERVICE, MP_ROLE, MP_SHARD,
    MP_SHARDS, MP_PORT, MP_HOST, MP_GRACE), with the Rust SDK's defaults."""

    def __init__(self):
        e = os.environ
        self.service = e.get("MP_SERVICE") or os.path.basename(sys.argv[0])
        self.role = e.get("MP_ROLE") or "handler"
        self.host = e.get("MP_HOST") or "0.0.0.0"
        self.shards = _int("MP_SHARDS", 1, minimum=1)
        self.shard = _int("MP_SHARD", 0, minimum=0)
        if self.shard >= self.shards:
            sys.exit(f"MP_SHARD={self.shard} is not valid: a whole number below MP_SHARDS ({self.shards})")
        self.port = _int("MP_PORT", None, minimum=1, maximum=65535)
        self.grace = _seconds("MP_GRACE", 10.0)
        self.hostname = socket.gethostname()


def _int(name, default, minimum=None, maximum=None):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        sys.exit(f"{name}={raw!r} is not valid: expected a whole number" + (f" from {minimum}" if minimum is not None else ""))
    return value


def _seconds(name, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("", 1.0)):
        if raw.endswith(suffix):
            try:
                value = float(raw[: len(raw) - len(suffix)] if suffix else raw) * scale
            except ValueError:
                break
            if value >= 0:
                return value
            break
    sys.exit(f"{name}={raw!r} is not valid: a duration such as 10s, 500ms or 2.5 (seconds)")


# --- JSON payloads -----------------------------------------------------------


def payload_json(payload):
    """The JSON value of an mp.v1.Payload; raises ValueError for raw bytes or
    no payload, with the same words as the Rust SDK."""
    kind = payload.WhichOneof("kind") if payload is not None else None
    if kind == "json":
        return json_format.MessageToDict(payload.json)
    if kind == "raw":
        raise ValueError('the body holds raw bytes, expected a JSON value (send {"body":{"json":...}})')
    raise ValueError('the request has no body, expected a JSON value (send {"body":{"json":...}})')


def reply_json(value):
    """An mp.v1.Reply whose body is the JSON `value`."""
    v = struct_pb2.Value()
    json_format.ParseDict(value, v)
    return pb.Reply(body=pb.Payload(json=v))


def status_code(number):
    """The grpc.StatusCode for a numeric code (UNKNOWN for anything else)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


# --- Serving ------------------------------------------------------------------


def serve(add_servicer, service_name):
    """Serves one mp.v1 service on MP_HOST:MP_PORT with grpc.health.v1 and
    server reflection, until SIGTERM or SIGINT; then reports NOT_SERVING,
    stops accepting, lets in-flight calls finish within MP_GRACE, exits 0."""
    logging.basicConfig(
        level=os.environ.get("MP_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    env = Env()
    if env.port is None:
        sys.exit(f"MP_PORT is not set: say which port to listen on, e.g. MP_PORT=7000 python3 {sys.argv[0]}")

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # One process per port: never share it with a stale server.
            ("grpc.so_reuseport", 0),
        ],
    )
    add_servicer(server)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)

    names = [service_name, health.SERVICE_NAME]
    try:
        from grpc_reflection.v1alpha import reflection

        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    except ImportError:
        log.warning("grpcio-reflection is not installed: grpcurl needs -proto (pip install -r requirements.txt)")

    addr = f"{env.host}:{env.port}"
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError as e:
        sys.exit(f"cannot listen on {addr}: {e} (is another process using the port?)")
    if bound == 0:
        sys.exit(f"cannot listen on {addr} (is another process using the port?)")
    server.start()
    log.info("serving %s on %s (service=%s role=%s shard=%d/%d)", service_name, addr, env.service, env.role, env.shard, env.shards)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()

    # Tell health checkers first, so balancers stop sending here.
    health_servicer.enter_graceful_shutdown()
    log.info("shutting down: no new calls, draining in-flight calls (grace %.1fs)", env.grace)
    server.stop(env.grace).wait()
    log.info("drained, bye")
