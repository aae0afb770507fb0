# Sourced by run_all.sh and run_tests.sh: create .venv when missing, install
# requirements.txt when it changed since the last install, and set $PY.
# Nothing here downloads model weights or data; pip reads the package index.
#
# TORCH_INDEX_URL: take torch (the version pinned in requirements.txt) from
# this package index instead, before the rest, e.g. PyTorch's CPU-only wheels:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash run_tests.sh
# Without it, torch comes from wherever pip is configured to look (on PyPI,
# Linux x86_64, that is the CUDA build with its nvidia-* packages).
# It acts when requirements are installed: on a fresh .venv, or delete .venv
# to switch one that already has torch.
venv_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="$venv_root/.venv"
if [ ! -x "$venv_dir/bin/python" ]; then
  base_python="$(command -v python3.11 || command -v python3 || true)"
  [ -n "$base_python" ] || { echo "error: python3 (3.11) not found" >&2; exit 2; }
  echo "setup: creating $venv_dir with $("$base_python" --version 2>&1)"
  "$base_python" -m venv "$venv_dir"
fi
want="$(sha256sum "$venv_root/requirements.txt" | cut -d' ' -f1)"
stamp="$venv_dir/.requirements.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    torch_pin="$(grep -E '^torch==' "$venv_root/requirements.txt")"
    echo "setup: installing $torch_pin into $venv_dir from $TORCH_INDEX_URL"
    "$venv_dir/bin/python" -m pip install -q --disable-pip-version-check --index-url "$TORCH_INDEX_URL" "$torch_pin"
  fi
  echo "setup: installing requirements.txt into $venv_dir"
  "$venv_dir/bin/python" -m pip install -q --disable-pip-version-check -r "$venv_root/requirements.txt"
  echo "$want" > "$stamp"
fi
PY="$venv_dir/bin/python"
export PY
