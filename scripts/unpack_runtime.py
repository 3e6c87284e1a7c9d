"""Unpack libonnxruntime.so from a downloaded onnxruntime wheel (used by `make runtime`).

usage: unpack_runtime.py WHEEL_DIR OUT_DIR
"""

import glob
import os
import sys
import zipfile


def main() -> int:
    wheel_dir, out_dir = sys.argv[1], sys.argv[2]
    wheels = glob.glob(os.path.join(wheel_dir, "onnxruntime-*.whl"))
    if len(wheels) != 1:
        print(f"expected one onnxruntime wheel in {wheel_dir}, found {wheels}", file=sys.stderr)
        return 1
    found = 0
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            base = os.path.basename(name)
            if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime.so"):
                target = os.path.join(out_dir, base)
                with wheel.open(name) as src, open(target + ".part", "wb") as dst:
                    dst.write(src.read())
                os.replace(target + ".part", target)
                found += 1
                print(f"unpacked {target}")
    if not found:
        print("the wheel holds no onnxruntime/capi/libonnxruntime.so*", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
