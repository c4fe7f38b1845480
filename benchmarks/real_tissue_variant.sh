#!/bin/bash
# Screen one training variant on a draw that benchmarks/real_tissue.py has already built, reusing
# its tissue masks, patch stores and folds (only training, prediction and evaluation rerun):
#
#   bash benchmarks/real_tissue_variant.sh NAME DRAW "key=value key=value ..."
#   NOVAL=1 bash benchmarks/real_tissue_variant.sh noval 0 ""   # folds without a validation part
#
# Reads benchmarks/work/real_tissue/draw$DRAW (from `python benchmarks/real_tissue.py`), writes
# benchmarks/work/variants/$NAME/draw$DRAW and appends one line (OOF AUC, fold AUCs, localisation
# AUC, seconds) to benchmarks/work/variants/results.txt. The overrides are applied to that draw's
# config.yaml with the same KEY=VALUE syntax as real_tissue.py --set.
set -euo pipefail
name=$1; draw=$2; sets=${3:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python}
src=$repo/benchmarks/work/real_tissue/draw$draw
wd=$repo/benchmarks/work/variants/$name/draw$draw
[ -d "$src/results/patches" ] || { echo "no $src: run python benchmarks/real_tissue.py first" >&2; exit 2; }
rm -rf "$wd"; mkdir -p "$wd"
cp -a "$src/results" "$wd/"
rm -rf "$wd/results/models" "$wd/results/predictions" "$wd/results/eval"
if [ -n "${NOVAL:-}" ]; then
    sed -i "s/^\([0-9]*\),val,/\1,train,/" "$wd/results/splits/real_tissue/folds.csv"
fi
# shellcheck disable=SC2086
"$python" - "$wd" "$src" $sets <<'PY'
import sys
import yaml
wd, src, *sets = sys.argv[1:]
sys.path.insert(0, "benchmarks")
from real_tissue import deep_update, parse_set
cfg = yaml.safe_load(open(f"{src}/config.yaml"))
cfg = deep_update(cfg, parse_set(sets))
open(f"{wd}/config.yaml", "w").write(yaml.safe_dump(cfg, sort_keys=False))
PY
start=$(date +%s)
PYTHONPATH=$repo/workflow "$python" -m snakemake --snakefile "$repo/Snakefile" --directory "$wd" \
    --configfile "$wd/config.yaml" --cores 2 results/eval/real_tissue/summary.json \
    --rerun-triggers mtime > "$wd/snakemake.log" 2>&1
end=$(date +%s)
"$python" -c "
import json; d = json.load(open('$wd/results/eval/real_tissue/summary.json'))
print('$name', 'draw$draw', 'oof', round(d['oof_auc'], 3), 'folds', [round(x, 2) for x in d['fold_auc']],
      'loc', round(d.get('localization_auc') or float('nan'), 3), 'sec', $end - $start)
" | tee -a "$repo/benchmarks/work/variants/results.txt"
