#!/usr/bin/env bash
# Reproduce docs/results.md: train WSI-SAM's head and SAM* on hgsc_nest, evaluate SAM, MedSAM,
# SAM* and WSI-SAM on the held-out hgsc_stromal nuclei, and run the ablations.
# About 100 minutes on a 2-core CPU; everything lands in outputs/results/.
# Set up first (bash scripts/setup.sh), then: bash scripts/reproduce_results.sh [main|ablations|all]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cli=.venv/bin/napari-wsi-sam
out=outputs/results
what="${1:-all}"

if [[ "$what" == main || "$what" == all ]]; then
  # WSI-SAM head: λ = 0.5, average aggregation, HR 0.25 µm/px, LR 0.5 µm/px, 6 epochs, seed 0.
  $cli train --data builtin:hgsc_nest --out $out/train-wsi-sam --no-progress
  # The joint head (issue 21): the same recipe, SAM's mask from the HR pass (two decoder
  # passes a prompt instead of three).
  $cli train --data builtin:hgsc_nest --sam-mask joint --out $out/train-wsi-sam-joint --no-progress
  # SAM*: SAM's mask decoder fine-tuned on the same crops and prompts.
  $cli train --data builtin:hgsc_nest --mode sam-decoder --out $out/train-sam-decoder --no-progress
  # Held-out evaluation (Tables 1 and 4, Figure 4).
  $cli evaluate --data builtin:hgsc_stromal \
    --models "sam,medsam,SAM*=sam-decoder:$out/train-sam-decoder/sam_decoder.pt,WSI-SAM=wsi-sam:$out/train-wsi-sam/head.pt,WSI-SAM joint=wsi-sam:$out/train-wsi-sam-joint/head.pt" \
    --prompts box,points:1,points:3,points:5,points:10 --seed 0 --out $out/heldout --no-progress
fi

if [[ "$what" == ablations || "$what" == all ]]; then
  # Table 3 (a, c): aggregation and λ, 2 epochs each (a smaller budget than the main head).
  for spec in "lam0:--lambda 0" "lam0.5:--lambda 0.5" "lam1:--lambda 1" \
              "max:--aggregation max" "concat_fc:--aggregation concat_fc"; do
    name="${spec%%:*}"; flags="${spec#*:}"
    # shellcheck disable=SC2086
    $cli train --data builtin:hgsc_nest --epochs 2 $flags --out $out/ablation-$name --no-progress
  done
  $cli evaluate --data builtin:hgsc_stromal --prompts box --seed 0 --out $out/ablations --no-progress \
    --models "sam,λ=0=wsi-sam:$out/ablation-lam0/head.pt,λ=0.5 avg=wsi-sam:$out/ablation-lam0.5/head.pt,λ=1=wsi-sam:$out/ablation-lam1/head.pt,max=wsi-sam:$out/ablation-max/head.pt,concat+FC=wsi-sam:$out/ablation-concat_fc/head.pt"
fi

if [[ "$what" == main || "$what" == all ]]; then
  # The measured rule: record the head's held-out result in it, install it into the package
  # (as hgsc_nuclei.pt) and write the per-magnification default (heads/default.json).
  cp $out/train-wsi-sam/head.pt $out/hgsc_nuclei.pt
  $cli heads decide $out/heldout/dice_per_object.csv --candidate WSI-SAM --baseline sam \
    --dataset hgsc_stromal --head $out/hgsc_nuclei.pt --structure nuclei \
    --install src/napari_wsi_sam/heads
  cp $out/train-wsi-sam-joint/head.pt $out/hgsc_nuclei_joint.pt
  $cli heads decide $out/heldout/dice_per_object.csv --candidate "WSI-SAM joint" --baseline sam \
    --dataset hgsc_stromal --head $out/hgsc_nuclei_joint.pt --structure nuclei \
    --install src/napari_wsi_sam/heads
fi
