#!/bin/sh
# The downlink table of docs/downlink.md: with SuRP 1% up, the model broadcast dense against its change
# compressed at 1% and 0.1% (SuRP, and global top-k as the control), each tuned on validation data,
# 5 paired seeds, 30 rounds (about 25 minutes on one core). Then:
#   python simulations/fair_uplink.py table runs/fair-downlink
exec fedcomp compare simulations/fedavg_fashion.toml \
  --method 'downlink={name="identity"}' \
  --method 'downlink={name="surp",density=0.01}' \
  --method 'downlink={name="topk",density=0.01,allocation="global"}' \
  --method 'downlink={name="surp",density=0.001}' \
  --tune client.lr=0.03,0.1 --seeds 5 \
  --out runs/fair-downlink --no-progress "$@"
