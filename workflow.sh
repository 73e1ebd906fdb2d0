#!/usr/bin/env bash
# rtq workflow: setup | demo | test | lint | table | bench | experiments | gpu-check | triton-setup
# Every command installs what it needs into .venv first (idempotent, quick when already done).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# torch is pinned in the same pip command as everything else so pip never swaps in a CUDA build.
TORCH_PIN="torch==2.13.0"
STAMP="$VENV/.rtq-setup-stamp"

setup_fingerprint() {
  { cat pyproject.toml; echo "$TORCH_PIN"; } | sha256sum | cut -d' ' -f1
}

cmd_setup() {
  local want
  want=$(setup_fingerprint)
  if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "setup: .venv is up to date"
    return 0
  fi
  if [ ! -x "$PY" ]; then
    echo "setup: creating .venv"
    python3 -m venv "$VENV"
  fi
  echo "setup: installing rtq and its dependencies into .venv (about a minute)"
  "$PY" -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$PY" -m pip install --quiet "$TORCH_PIN" -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
  "$PY" -c "import rtq, torch, modelopt.torch.quantization, onnx, onnx_graphsurgeon, polygraphy, onnxruntime, openvino, nncf, pycocotools, hydra" \
    || { echo "setup: the installation is incomplete (see pip's messages above)" >&2; exit 1; }
  echo "$want" > "$STAMP"
  echo "setup: done"
}

ensure_setup() {
  if [ ! -x "$PY" ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$(setup_fingerprint)" ]; then
    cmd_setup
  fi
}

cmd_test() {
  ensure_setup
  "$VENV/bin/ruff" check rtq tests plugins
  "$VENV/bin/mypy" rtq
  # Tests marked slow (larger models, long sweeps) run with RTQ_SLOW=1 ./workflow.sh test
  local marker="not slow"
  [ "${RTQ_SLOW:-0}" = "1" ] && marker=""
  "$PY" -m pytest -q -m "$marker" "$@"
}

cmd_lint() {
  ensure_setup
  "$VENV/bin/ruff" check rtq tests plugins
  "$VENV/bin/mypy" rtq
}

cmd_demo() {
  ensure_setup
  "$PY" -m rtq.demo "$@"
}

cmd_table() {
  ensure_setup
  "$PY" -m rtq.table "$@"
}

cmd_bench() {
  ensure_setup
  "$PY" -m rtq.bench "$@"
}

cmd_gpu_check() {
  # What only an NVIDIA GPU can verify (kernel, TensorRT plugins, engines); one line and exit 0 without one.
  ensure_setup
  "$PY" -m rtq.gpu_check "$@"
}

cmd_triton_setup() {
  # A real tritonserver (nvidia-pytriton's wheel; Python backend only) in its own venv, as it needs
  # numpy<2; ONNX Runtime and OpenVINO at the main venv's versions, for the Python-backend models.
  ensure_setup
  local tvenv="$ROOT/.venv-triton" tpy="$ROOT/.venv-triton/bin/python" pins want
  pins="nvidia-pytriton==0.7.0 numpy<2 $("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("onnxruntime", "openvino")))')"
  want=$(echo "$pins" | sha256sum | cut -d' ' -f1)
  if [ -x "$tpy" ] && [ -f "$tvenv/.rtq-setup-stamp" ] && [ "$(cat "$tvenv/.rtq-setup-stamp")" = "$want" ]; then
    echo "triton-setup: .venv-triton is up to date"
    return 0
  fi
  [ -x "$tpy" ] || python3 -m venv "$tvenv"
  echo "triton-setup: installing $pins into .venv-triton (about a minute)"
  # shellcheck disable=SC2086 # the pins are separate words
  "$tpy" -m pip install --quiet $pins 2>&1 | grep -v '^WARNING: Location' || true
  "$tpy" -c "import pytriton, onnxruntime, openvino, numpy" \
    || { echo "triton-setup: the installation is incomplete (see pip's messages above)" >&2; exit 1; }
  echo "$want" > "$tvenv/.rtq-setup-stamp"
  echo "triton-setup: done"
}

cmd_experiments() {
  ensure_setup
  bash experiments/run_all.sh "$@"
}

usage() {
  echo "usage: ./workflow.sh {setup|demo|test|lint|table|bench|experiments|gpu-check|triton-setup} [args...]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
command=$1
shift
case "$command" in
  setup) cmd_setup ;;
  demo) cmd_demo "$@" ;;
  test) cmd_test "$@" ;;
  lint) cmd_lint ;;
  table) cmd_table "$@" ;;
  bench) cmd_bench "$@" ;;
  experiments) cmd_experiments "$@" ;;
  gpu-check) cmd_gpu_check "$@" ;;
  triton-setup) cmd_triton_setup ;;
  *) usage ;;
esac
