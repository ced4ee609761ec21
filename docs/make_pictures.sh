#!/usr/bin/env bash
# Regenerate the pictures shown on the documentation pages (docs/_static/*.png).
#
#   bash docs/make_pictures.sh          # the seeds' edge picture only (seconds, no training)
#   bash docs/make_pictures.sh --all    # also trains LeNet-5 on the embedded digits for 3 epochs
#                                       # (about a minute on a laptop CPU) and draws its filters,
#                                       # feature maps, deconvnet projections and receptive field
#
# The docs build never runs this script: it only shows the PNGs committed in docs/_static.
# Run it from the repository root with the `cnnjax` command of this checkout on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/_static
mkdir -p "$out"

cnnjax viz edges --output "$out/edges.png"

if [[ "${1:-}" == "--all" ]]; then
  run=$(mktemp -d)/lenet5
  trap 'rm -rf "$(dirname "$run")"' EXIT
  cnnjax train lenet5 --epochs 3 --workdir "$run" --quiet
  cnnjax viz filters "$run" --output "$out/filters.png"
  cnnjax viz features "$run" --index 0 --output "$out/features.png"
  cnnjax viz deconv "$run" --top 6 --output "$out/deconv.png"
  cnnjax viz receptive-field "$run" --output "$out/receptive_field.png"
fi
