"""HED statistics of the demo's tiles, the target distribution of the stain-transfer experiment.

Run by hand in a clone where the demo has run (``DEMO_CLONE``):

    python benchmarks/exploratory/hed_stats.py DEMO_CLONE > demo_hed_stats.json

For every tile in ``DEMO_CLONE/results/demo/tiles.csv`` (read from the packaged tile archive):
the optical density -log(max(rgb, 1/255)) of each pixel, deconvolved into haematoxylin, eosin
and DAB with the Ruifrok & Johnston (2001) stain vectors that ``gigamil.nn.augment`` uses (rows
normalised), and the tile's mean and standard deviation per stain. Prints the mean and the
standard deviation over the tiles of those six per-tile values (``mu_mean``, ``mu_sd``,
``sd_mean``, ``sd_sd``: RandStainNA's per-statistic Gaussians, Shen et al. 2022).
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.nn.augment import RGB_FROM_HED  # noqa: E402

TILES = REPO / "workflow" / "gigamil" / "data" / "pcam_demo_tiles.zip"


def main() -> None:
    clone = Path(sys.argv[1])
    files = pd.read_csv(clone / "results" / "demo" / "tiles.csv")["file"]
    rgb_from_hed = np.array(RGB_FROM_HED)
    rgb_from_hed /= np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    hed_from_rgb = np.linalg.inv(rgb_from_hed)
    mus, sds = [], []
    with zipfile.ZipFile(TILES) as z:
        for f in files:
            rgb = np.asarray(Image.open(io.BytesIO(z.read(f))).convert("RGB"), dtype=np.float64)
            od = -np.log(np.clip(rgb / 255.0, 1.0 / 255.0, None)).reshape(-1, 3)
            hed = od @ hed_from_rgb
            mus.append(hed.mean(0))
            sds.append(hed.std(0))
    mu, sd = np.array(mus), np.array(sds)
    stats = {"mu_mean": mu.mean(0), "mu_sd": mu.std(0), "sd_mean": sd.mean(0), "sd_sd": sd.std(0)}
    print(json.dumps({k: [round(float(x), 4) for x in v] for k, v in stats.items()}, indent=1))


if __name__ == "__main__":
    main()
