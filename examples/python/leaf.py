"""histogram leaf in Python: the same contract as the Rust `histogram-leaf`.

Replies 100 samples of a Gaussian (mean 100, sigma 25, drawn again when beyond
[0, 200), the histogram's range) as a JSON array, so a
Python leaf and a Rust leaf are interchangeable behind mp-gather.

    pip install -r requirements.txt
    MP_PORT=7001 python3 leaf.py
    grpcurl -plaintext 127.0.0.1:7001 mp.v1.Handler/Handle
"""

import random

import grpc

import mpcontract
from mpcontract import pb, pb_grpc

SAMPLES, MEAN, SIGMA, LOW, HIGH = 100, 100.0, 25.0, 0.0, 200.0


def sample():
    """One draw of the Gaussian, truncated to [LOW, HIGH) by drawing again."""
    while True:
        x = random.gauss(MEAN, SIGMA)
        if LOW <= x < HIGH:
            return x


class Leaf(pb_grpc.HandlerServicer):
    def Handle(self, request, context):
        # The body is ignored, but like the Rust SDK's JSON handlers, a leaf
        # refuses raw bytes: the contract says JSON.
        if request.HasField("body") and request.body.WhichOneof("kind") == "raw":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                'the body holds raw bytes, expected a JSON value (send {"body":{"json":...}})',
            )
        return mpcontract.reply_json([sample() for _ in range(SAMPLES)])


if __name__ == "__main__":
    mpcontract.serve(lambda server: pb_grpc.add_HandlerServicer_to_server(Leaf(), server), "mp.v1.Handler")
