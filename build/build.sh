#!/usr/bin/env bash
# Build the single executable dist/dcron with PyInstaller (see dcron.spec).
#
# Every build starts from a clean virtual environment (build/.venv-build) with
# the pinned runtime requirements and the pinned build tools, so the binary
# holds exactly the versions in requirements.txt and nothing left over from a
# development venv. PYTHON chooses the interpreter (default python3); it must
# be CPython 3.11 or newer built with a shared libpython, as PyInstaller needs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=build/.venv-build

rm -rf "$VENV" build/pyinstaller
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
    -r requirements.txt -r build/requirements-build.txt
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller dcron.spec

echo "built dist/dcron: $(du -h dist/dcron | cut -f1), $(dist/dcron version)"
