#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (ignored by git), for its Python 3.12 on
# x86-64 Linux, and check that the set is complete: every Requires-Dist of every wheel (markers
# evaluated for that machine, extras left out) is carried too or already installed there
# (device_packages.txt). run.sh installs them there with
#   pip install --no-index --no-deps --target DIR .whl/*.whl
#
# usage: benchmarks/gpu/fetch_wheels.sh [DEST]      (DEST defaults to .whl at the repository root)
#        benchmarks/gpu/fetch_wheels.sh --check DEST  (only check an existing folder)
# The pins are in benchmarks/gpu/wheels.txt. Exit status 0 when the set is complete, 1 if not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}
check_only=0
if [ "${1:-}" = "--check" ]; then
  check_only=1
  shift
fi
dest=${1:-$root/.whl}
mkdir -p "$dest"

if [ "$check_only" = 0 ]; then
  # manylinux tags are matched exactly by pip, so name the ones these packages use
  platforms=()
  for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 \
    manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  while read -r pin; do
    case "$pin" in '' | '#'*) continue ;; esac
    echo "fetching $pin"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d "$dest" "$pin"
  done <"$here/wheels.txt"
fi

"$py" - "$dest" "$here/wheels.txt" "$here/device_packages.txt" <<'PY'
"""Check the wheel folder: one wheel per pin at the pinned version, nothing else, and every
requirement of every wheel met on the GPU machine (Python 3.12, x86-64 Linux)."""
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

dest, pins_file, device_file = (Path(a) for a in sys.argv[1:4])
strip = lambda line: line.split("#", 1)[0].strip()  # noqa: E731
pins = {}
for line in pins_file.read_text().splitlines():
    if strip(line):
        name, version = strip(line).split("==")
        pins[canonicalize_name(name)] = version
device = {canonicalize_name(n) for line in device_file.read_text().splitlines()
          for n in strip(line).split()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "extra": ""}

problems = []
wheels = {}
for whl in sorted(dest.glob("*.whl")):
    name, version, _, tags = parse_wheel_filename(whl.name)
    if name in wheels:
        problems.append(f"two wheels of {name}: {wheels[name].name} and {whl.name}")
    wheels[name] = whl
    if name not in pins:
        problems.append(f"{whl.name} is not in {pins_file.name} (remove it)")
    elif str(version) != pins[name]:
        problems.append(f"{whl.name}: version {version}, pinned {pins[name]}")
    if not any(t.interpreter in ("py3", "cp312") or t.abi == "abi3" for t in tags):
        problems.append(f"{whl.name} is not for CPython 3.12")
for name in pins:
    if name not in wheels:
        problems.append(f"no wheel for {name}=={pins[name]}")

carried = set(wheels)
for name, whl in sorted(wheels.items()):
    with zipfile.ZipFile(whl) as z:
        meta_name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        meta = Parser().parsestr(z.read(meta_name).decode())
    for text in meta.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        needed = canonicalize_name(req.name)
        if needed in carried:
            version = parse_wheel_filename(wheels[needed].name)[1]
            if req.specifier and version not in req.specifier:
                problems.append(f"{name} needs {req}, carried {version}")
        elif needed not in device:
            problems.append(f"{name} needs {req}: neither carried nor on the GPU machine")

size = sum(w.stat().st_size for w in wheels.values())
print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {dest}")
if size > 40 * 2**20:
    problems.append(f"{size / 2**20:.0f} MiB of wheels: more than 40 MiB leaves too little of "
                    "the 64 MiB a run may carry for the working tree")
for p in problems:
    print(f"incomplete: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("complete: every requirement of every wheel is carried or on the GPU machine")
PY
