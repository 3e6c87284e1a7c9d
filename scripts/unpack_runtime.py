"""Unpack libonnxruntime.so from a downloaded onnxruntime wheel (used by `make runtime`), and
with --provider cuda also the CUDA provider's libraries from an onnxruntime-gpu wheel (used by
`make runtime-gpu`: libonnxruntime_providers_shared.so and libonnxruntime_providers_cuda.so,
which ONNX Runtime loads from beside libonnxruntime.so).

usage: unpack_runtime.py [--provider cuda] WHEEL_DIR OUT_DIR
"""

import argparse
import glob
import os
import sys
import zipfile

PROVIDER_LIBRARIES = {
    "cuda": ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", choices=sorted(PROVIDER_LIBRARIES), action="append", default=[])
    parser.add_argument("wheel_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    wheels = glob.glob(os.path.join(args.wheel_dir, "onnxruntime*.whl"))
    if len(wheels) != 1:
        print(f"expected one onnxruntime wheel in {args.wheel_dir}, found {wheels}", file=sys.stderr)
        return 1
    wanted = {name for p in args.provider for name in PROVIDER_LIBRARIES[p]}
    found = 0
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            base = os.path.basename(name)
            if not name.startswith("onnxruntime/capi/"):
                continue
            if base.startswith("libonnxruntime.so") or base in wanted:
                target = os.path.join(args.out_dir, base)
                with wheel.open(name) as src, open(target + ".part", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.replace(target + ".part", target)
                wanted.discard(base)
                found += 1
                print(f"unpacked {target}")
    if not found:
        print("the wheel holds no onnxruntime/capi/libonnxruntime.so*", file=sys.stderr)
        return 1
    if wanted:
        print(f"the wheel lacks {sorted(wanted)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
