#!/usr/bin/env bash
# `make demo`: a small MoE and a dense model of the same active size, both fine-tuned on SST-2 by
# `moe-rbench finetune` (demo/build_models.py), evaluated on Style-OOD with the stock lm_eval (250 documents per
# set), then the MoE-vs-dense report and the routing trace. Offline, on demo/data.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=.demo
rm -rf "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MOE_RBENCH_DATA_DIR=demo/data
evaluate() {  # name, extra model arguments
    "$BIN/lm_eval" --model moe_hf --model_args "pretrained=demo/models/$1$2" --tasks moe_rbench_ood \
        --batch_size 32 --output_path "$OUT/results/$1" > "$OUT/$1.log" 2>&1 || { cat "$OUT/$1.log"; exit 1; }
}
mkdir -p "$OUT"
echo "evaluating the MoE (recording its routing) and the dense model on moe_rbench_ood ..."
evaluate moe ",routing_out=$OUT/routing"
evaluate dense ""
"$BIN/moe-rbench" trace --routing "$OUT/routing" --id moe_rbench_sst2 --ood 'moe_rbench_style_*' \
    --out "$OUT/results/moe/trace" > /dev/null
"$BIN/moe-rbench" report "$OUT/results/moe" "$OUT/results/dense" --label moe --label dense --pair moe=dense \
    --out "$OUT/report" > /dev/null
echo
cat "$OUT/report/style_ood.md"
echo
echo "report (tables, Style-OOD figure, routing heatmap): $OUT/report/report.md"
