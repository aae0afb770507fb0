# Sourced by run_all.sh and run_tests.sh: create .venv when missing, install
# requirements.txt when it changed since the last install, and set $PY.
# Nothing here downloads model weights or data; pip reads the package index.
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
  echo "setup: installing requirements.txt into $venv_dir"
  "$venv_dir/bin/python" -m pip install -q --disable-pip-version-check -r "$venv_root/requirements.txt"
  echo "$want" > "$stamp"
fi
PY="$venv_dir/bin/python"
export PY
