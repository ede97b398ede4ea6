# The Stage-2 convergence study on one GPU (run by `PLAN=benchmarks/h100_stage2_study_plan.sh
# bash benchmarks/h100_mini_dag.sh start OUTDIR`, then `follow` calls; no FID weights needed):
# the science chain up to the Stage-1 latents (data, Stage 1, encode; ~10 minutes), then
# benchmarks/stage2_convergence.py trains each recipe of STUDY_RECIPES for STUDY_SECONDS on
# those latents and measures its samples. Results land in results/stage2_study/, which the
# follow calls bring back (models and stores stay behind). STUDY_STAGE1_STEPS=N trains Stage 1
# for N steps instead of the config's (a shorter chain when less device time is left).
set -x
mkdir -p logs results
python3 -c "
import yaml
config = yaml.safe_load(open('config/science.yaml'))
config['seed'] = int('${SCIENCE_SEED:-0}')
if '${STUDY_STAGE1_STEPS:-}':
    config['stage1']['training']['max_steps'] = int('${STUDY_STAGE1_STEPS:-0}')
yaml.safe_dump(config, open('/root/science_gpu.yaml', 'w'))"
CONFIG=/root/science_gpu.yaml mini_snakemake -- results/stage1/1vq/latents.zarr || exit 1
python3 benchmarks/stage2_convergence.py --config /root/science_gpu.yaml --latents results/stage1/1vq/latents.zarr \
    --stage1-model results/stage1/1vq/model.pt --seconds "${STUDY_SECONDS:-260}" \
    --recipes "${STUDY_RECIPES:-paper,paper-minsnr}" --out results/stage2_study
