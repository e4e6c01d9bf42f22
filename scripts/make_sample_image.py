"""Make the packaged sample image from a held-out photograph of the training-set build.

    apt-get download lomiri-wallpapers-16.04 && dpkg -x lomiri-wallpapers-16.04_*.deb pkg
    python scripts/make_sample_image.py \\
        pkg/usr/share/backgrounds/Picture_0B_by_freespace.jpg src/oscar/assets/sample.png

The source is "Picture 0B" by Trevor "Freespace" (2018, CC BY 4.0; Debian package
lomiri-wallpapers-16.04 20.04.0-2), a photograph held out from the embedded model's training
(datasets/photos-v2.csv), so the demo shows what a user's photographs get. It is scaled with
Lanczos to 768 pixels wide and cut to the middle 512 rows (768×512, the size of a Kodak image);
src/oscar/assets/SAMPLE-LICENSE.txt carries the attribution the licence asks for.
"""

from __future__ import annotations

import hashlib
import sys

from PIL import Image, ImageOps

W, H = 768, 512
SOURCE_SHA256 = "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"


def make(source: str, out: str) -> None:
    with open(source, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        print(f"warning: {source} has SHA-256 {digest}, not the packaged {SOURCE_SHA256}")
    with Image.open(source) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        height = round(im.height * W / im.width)
        im = im.resize((W, height), Image.Resampling.LANCZOS)
        top = (height - H) // 2
        im.crop((0, top, W, top + H)).save(out, optimize=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    make(sys.argv[1], sys.argv[2])
