"""SuRP at several densities in one script, on one engine: ``fedcomp.shared_engine()``.

    python examples/compare_densities.py [--rounds 5] [--output-dir runs] [--backend ray|in-process]

Each ``fedcomp.run`` inside the block reuses Ray and the client workers the
first one started, so the runs after it pay no start-up. Prints one line per
density: final accuracy and uplink bytes.
"""

from __future__ import annotations

import argparse

import fedcomp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--backend", choices=["ray", "in-process"], default="ray", help="where the clients run")
    args = parser.parse_args()
    with fedcomp.shared_engine():
        for density in (0.1, 0.01):
            result = fedcomp.run(
                {
                    "name": f"surp-{density}",
                    "output_dir": args.output_dir,
                    "federation": {"num_clients": 3, "rounds": args.rounds},
                    "client": {"local_steps": 10},
                    "uplink": {"name": "surp", "density": density},
                    "simulation": {"backend": args.backend},
                },
                progress=False,
            )
            print(f"density {density}: accuracy {result.final_accuracy:.3f}, uplink {result.uplink_bytes:,} B")


if __name__ == "__main__":
    main()
