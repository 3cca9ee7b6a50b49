"""histogram merger in Python: the same contract as the Rust `histogram-merge`.

Counts every leaf's samples into 10 bins of width 20 over [0, 200), dropping
values outside it, and replies the JSON array of 10 counts. A leaf that failed,
or whose reply is not an array of numbers, is left out; only when no leaf
answered is the merge an error (with the first failure's code).

    pip install -r requirements.txt
    MP_PORT=7002 python3 merge.py
"""

import logging
import math

import mpcontract
from mpcontract import pb_grpc

BINS, WIDTH = 10, 20.0

log = logging.getLogger("merge")


def count(counts, samples):
    """Adds `samples` to `counts`; values outside [0, 200) and NaN are dropped."""
    for x in samples:
        b = x / WIDTH
        if 0 <= b < BINS:  # False for NaN, so NaN is dropped too
            counts[int(b)] += 1


def leaf_samples(outcome):
    """(samples, None) for a leaf that answered an array of numbers, else
    (None, (code, message))."""
    if outcome.WhichOneof("outcome") == "error":
        return None, (outcome.error.code, outcome.error.message)
    if outcome.WhichOneof("outcome") != "reply":
        return None, (2, f"shard {outcome.shard} has neither a reply nor an error")
    try:
        value = mpcontract.payload_json(outcome.reply.body if outcome.reply.HasField("body") else None)
    except ValueError as e:
        return None, (13, f"shard {outcome.shard} replied: {e}")
    # bool is an int in Python, not a number in JSON.
    if not isinstance(value, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isinf(x) for x in value
    ):
        return None, (13, f"shard {outcome.shard} replied with JSON that is not an array of numbers")
    return value, None


class Merge(pb_grpc.MergerServicer):
    def Merge(self, request, context):
        counts = [0] * BINS
        answered = 0
        first_failure = None
        for outcome in request.leaves:
            samples, failure = leaf_samples(outcome)
            if failure is not None:
                log.warning("leaving out shard %d: %s", outcome.shard, failure[1])
                if first_failure is None:
                    first_failure = (failure[0], f"shard {outcome.shard}: {failure[1]}")
                continue
            answered += 1
            count(counts, samples)
        if request.leaves and answered == 0:
            code, message = first_failure
            context.abort(mpcontract.status_code(code), f"no leaf answered; first failure: {message}")
        return mpcontract.reply_json(counts)


if __name__ == "__main__":
    mpcontract.serve(lambda server: pb_grpc.add_MergerServicer_to_server(Merge(), server), "mp.v1.Merger")
