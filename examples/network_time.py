"""How long would it take on real links? Dense against SuRP 1%, each client on its own network profile.

    python examples/network_time.py [--rounds 3] [--output-dir runs] [--backend ray|in-process]

``[network]`` (docs/runs.md) gives each client an uplink and downlink bandwidth and a latency (here
client i gets ``profile[i % 3]``: 3G, LTE, home broadband; the figures are illustrative) and each round
a simulated duration: the server waits for its slowest sampled client. Prints, per uplink, the
simulated time the run took and its final accuracy; ``fedcomp report`` on the two run directories adds
simulated time to target and an accuracy-against-time figure. Simulated time is a model, not a
measurement.
"""

from __future__ import annotations

import argparse

import fedcomp

UPLINKS = {"dense": {"name": "identity"}, "SuRP 1%": {"name": "surp", "density": 0.01}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--backend", choices=["ray", "in-process"], default="ray", help="where the clients run")
    args = parser.parse_args()
    with fedcomp.shared_engine():
        for label, uplink in UPLINKS.items():
            result = fedcomp.run(
                {
                    "name": "network-" + uplink["name"],
                    "output_dir": args.output_dir,
                    "federation": {"num_clients": 3, "rounds": args.rounds},
                    "client": {"local_steps": 10},
                    "uplink": uplink,
                    "network": {"link": "profile", "profile": ["3g", "lte", "broadband"]},
                    "simulation": {"backend": args.backend},
                },
                progress=False,
            )
            clock = result.rows[-1]["sim_clock_s"]
            print(f"{label}: {clock:.1f} s simulated, accuracy {result.final_accuracy:.3f}, run {result.run_dir}")


if __name__ == "__main__":
    main()
