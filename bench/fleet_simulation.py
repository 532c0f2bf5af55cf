"""What routing costs at scale: a simulation of a fleet of G GPUs serving a catalog of checkpoints,
carrying a per-request and a per-load cost (measured, or published GPU figures) to 8, 64 and 512
GPUs. docs/fleet.md discusses its output.

Model: requests arrive as a Poisson stream at `--load` times the fleet's compute capacity (G /
request_s per second); each asks for one checkpoint of `--catalog`, drawn from a Zipf law with
exponent `--zipf` (a few checkpoints take most requests, a long tail the rest). Each GPU serves its
queue in order, one request at a time, and keeps `--slots` checkpoints resident (least recently
used evicted); a request for a checkpoint its GPU does not hold first loads it (load_s). Policies:

- round_robin: GPUs in turn, whatever they hold;
- least_loaded: the shorter queue of two GPUs drawn at random (Serve without model ids);
- serve: Ray Serve's multiplexed routing, as it behaves here: the holders of the checkpoint while
  one has a free slot among `--max-ongoing` requests, else the GPUs with the fewest checkpoints,
  else any (the shorter queue of two in each set); its report lag is not modelled (in its favour);
- affinity: daguerre's router (engine/ray/routing.py): the holder with the shortest queue, waiting
  for a free slot there; another GPU (one with a free slot) only after `--affinity-wait` seconds
  without one; a checkpoint nobody holds goes to a GPU with room for another checkpoint, else the
  shortest queue.

The figure that matters is the share of GPU time spent loading instead of rendering; the first
`--warmup` of the requests (caches filling) are not counted.

    python bench/fleet_simulation.py [--request-s 0.7 --load-s 6.8] [--gpus 8 64 512]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import statistics
from collections import OrderedDict, deque
from dataclasses import dataclass, field

POLICIES = ("round_robin", "least_loaded", "serve", "affinity")


@dataclass
class Gpu:
    index: int
    free_at: float = 0.0  # when its queue drains
    resident: OrderedDict[int, None] = field(default_factory=OrderedDict)
    finishes: deque[float] = field(default_factory=deque)  # of the requests it has, in order

    def backlog(self, now: float) -> float:
        return max(0.0, self.free_at - now)

    def ongoing(self, now: float) -> int:
        """Requests running or queued here: what Serve's max_ongoing_requests counts."""
        while self.finishes and self.finishes[0] <= now:
            self.finishes.popleft()
        return len(self.finishes)


@dataclass(frozen=True)
class Outcome:
    loading_share: float  # of GPU busy time
    loads_per_100: float
    p50_wait_s: float
    p95_wait_s: float


class Fleet:
    def __init__(self, gpus: int, slots: int, args: argparse.Namespace, rng: random.Random) -> None:
        self.gpus = [Gpu(index) for index in range(gpus)]
        self.slots = slots
        self.args = args
        self.rng = rng
        self.holders: dict[int, set[int]] = {}
        self.turn = itertools.count()

    def shorter_of_two(self, candidates: list[Gpu], now: float) -> Gpu:
        pair = self.rng.sample(candidates, 2) if len(candidates) > 1 else candidates
        return min(pair, key=lambda gpu: gpu.backlog(now))

    def new_home(self, candidates: list[Gpu], now: float) -> Gpu:
        return min(candidates, key=lambda gpu: (len(gpu.resident) >= self.slots, gpu.backlog(now), self.rng.random()))

    def choose(self, policy: str, model: int, now: float) -> Gpu:
        if policy == "round_robin":
            return self.gpus[next(self.turn) % len(self.gpus)]
        if policy == "least_loaded":
            return self.shorter_of_two(self.gpus, now)
        holders = [self.gpus[index] for index in self.holders.get(model, ())]
        if policy == "serve":
            free = [gpu for gpu in holders if gpu.ongoing(now) < self.args.max_ongoing]
            if free:
                return self.shorter_of_two(free, now)
            fewest = min(len(gpu.resident) for gpu in self.gpus)
            return self.shorter_of_two([gpu for gpu in self.gpus if len(gpu.resident) == fewest], now)
        if holders:
            best = min(holders, key=lambda gpu: gpu.backlog(now))
            # A full holder (max_ongoing requests) keeps the request waiting in the router until it
            # has room, about until its max_ongoing-th request from the end finishes; past
            # affinity_wait_s it may go to a replica with room (one with none would refuse it too).
            full = best.ongoing(now) >= self.args.max_ongoing
            wait = best.finishes[-self.args.max_ongoing] - now if full else 0.0
            if wait <= self.args.affinity_wait:
                return best
            limit = self.args.max_ongoing
            others = [gpu for gpu in self.gpus if gpu.index not in self.holders[model] and gpu.ongoing(now) < limit]
            return self.new_home(others, now) if others else best
        return self.new_home(self.gpus, now)

    def serve(self, gpu: Gpu, model: int, now: float) -> tuple[bool, float]:
        """Queue the request on `gpu`; whether it loads, and how long it waits to start."""
        loads = model not in gpu.resident
        if loads:
            if len(gpu.resident) >= self.slots:
                evicted, _ = gpu.resident.popitem(last=False)
                self.holders[evicted].discard(gpu.index)
            gpu.resident[model] = None
            self.holders.setdefault(model, set()).add(gpu.index)
        gpu.resident.move_to_end(model)
        start = max(now, gpu.free_at)
        gpu.free_at = start + self.args.request_s + (self.args.load_s if loads else 0.0)
        gpu.finishes.append(gpu.free_at)
        return loads, start - now


def simulate(policy: str, gpus: int, slots: int, load: float, args: argparse.Namespace) -> Outcome:
    rng = random.Random(args.seed)
    weights = list(itertools.accumulate(1 / rank**args.zipf for rank in range(1, args.catalog + 1)))
    fleet = Fleet(gpus, slots, args, rng)
    rate = load * gpus / args.request_s
    requests = max(args.requests_per_gpu * gpus, 20_000)
    warmup = int(requests * args.warmup)
    now, loads, waits = 0.0, 0, []
    for number in range(requests):
        now += rng.expovariate(rate)
        model = bisect.bisect_left(weights, rng.random() * weights[-1])
        loaded, wait = fleet.serve(fleet.choose(policy, model, now), model, now)
        if number >= warmup:
            loads += loaded
            waits.append(wait)
    counted = requests - warmup
    load_time, render_time = loads * args.load_s, counted * args.request_s
    quantiles = statistics.quantiles(waits, n=20)
    return Outcome(load_time / (load_time + render_time), 100 * loads / counted, quantiles[9], quantiles[18])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--request-s",
        type=float,
        default=0.7,
        help="GPU seconds of one request (default: SD 1.5 512x512, 30 steps on an H100, published)",
    )
    parser.add_argument(
        "--load-s",
        type=float,
        default=6.8,
        help="GPU seconds of one checkpoint load (default: SD 1.5 from local disk to the GPU, 1.4 + 5.4 s, published)",
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument(
        "--slots",
        type=int,
        nargs="+",
        default=[6, 20],
        help="checkpoints resident per GPU (max_models_per_replica): 6 fit 60%% of a 24 GB GPU, 20 of an 80 GB one",
    )
    parser.add_argument("--catalog", type=int, default=1000, help="checkpoints in the catalog")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent (rank r is asked 1/r^s)")
    parser.add_argument(
        "--load", type=float, nargs="+", default=[0.1, 0.3, 0.7], help="offered loads, shares of rendering capacity"
    )
    parser.add_argument("--max-ongoing", type=int, default=8, help="requests a replica accepts (serve policy)")
    parser.add_argument("--affinity-wait", type=float, default=10.0, help="affinity_wait_s (affinity policy)")
    parser.add_argument("--requests-per-gpu", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=0.3, help="share of requests not counted")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"catalog {args.catalog} checkpoints, Zipf {args.zipf}; request {args.request_s} s, load {args.load_s} s "
        f"({args.load_s / args.request_s:.1f} requests' worth); max_ongoing {args.max_ongoing}, "
        f"affinity_wait_s {args.affinity_wait}"
    )
    print(
        f"{'GPUs':>5} {'slots':>5} {'offered':>7} {'policy':>12} {'GPU time loading':>16} {'loads/100 req':>13} "
        f"{'p50 wait s':>10} {'p95 wait s':>10}"
    )
    for gpus, slots, load in itertools.product(args.gpus, args.slots, args.load):
        for policy in POLICIES:
            outcome = simulate(policy, gpus, slots, load, args)
            print(
                f"{gpus:>5} {slots:>5} {load:>7.0%} {policy:>12} {outcome.loading_share:>16.1%} "
                f"{outcome.loads_per_100:>13.1f} {outcome.p50_wait_s:>10.1f} {outcome.p95_wait_s:>10.1f}"
            )


if __name__ == "__main__":
    main()
