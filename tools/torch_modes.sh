#!/usr/bin/env bash
# The PyTorch mode check on every model and mode, and on the planted bugs it
# must catch. Prints one line per run; exits non-zero if a correct run fails
# or a planted bug passes where the model has the structure it breaks.
#   cargo build --release && tools/torch_modes.sh      (needs .venv with torch)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODES=("standard --fwd 0.3" "forward --fwd 0.3" "backward --bwd 0.3" "augmented --fwd 0.2 --bwd 0.1" "augmented --fwd 0.2 --bwd 0.0001")
bad=0
run() { # expect(pass|fail) model plant mode...
  local expect=$1 model=$2 plant=$3; shift 3
  local line
  line=$("$PY" tools/torch_check.py --model "$model" --plant "$plant" --dropout "$@" 2>&1 | tail -1)
  local got=fail; [[ $line == *PASS ]] && got=pass
  printf '%-6s %-17s %-22s %-30s %s\n' "$([[ $got == "$expect" ]] && echo ok || echo WRONG)" \
    "$model" "$plant" "$*" "${line#worst relative error }"
  [[ $got == "$expect" ]] || bad=1
}
for model in convnet_quick resnet20 drop_pool_bn_add; do
  run pass "$model" none plain
  for mode in "${MODES[@]}"; do run pass "$model" none $mode; done
done
# Planted bugs: each must fail in the modes with F != B on the models that
# have what it breaks (max pool and batch norm after a site: the fixture only;
# a site before a parameter-free op: ConvNet-Quick and the fixture).
for mode in "forward --fwd 0.3" "backward --bwd 0.3" "augmented --fwd 0.2 --bwd 0.1"; do
  for model in convnet_quick resnet20 drop_pool_bn_add; do run fail "$model" wrong-mask $mode; done
  for model in convnet_quick drop_pool_bn_add; do run fail "$model" direct-consumers-only $mode; done
  run fail drop_pool_bn_add argmax-forward $mode
  run fail drop_pool_bn_add bn-forward-stats $mode
done
exit $bad
