"""The seed document's Corsica v1 workflow: its evalscript and payload, verbatim (newlines restored)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_DOC = ROOT.parent / "shared" / "seed" / "batch-processing-workflow-examples.txt"
EVALSCRIPT = (ROOT / "dags_examples" / "include" / "max_ndvi.js").read_text()

# As printed in the seed document (its extraction lost the newlines, which JavaScript needs after //VERSION=3).
SEED_EVALSCRIPT_FLAT = (
    '//VERSION=3function setup() {return {input: [{bands: ["B04", "B08"]}],output: [{id: "default",bands: 3}],'
    "mosaicking: Mosaicking.ORBIT}}function calcNDVI(sample) {var denom = sample.B04 + sample.B08return "
    "((denom != 0) ? (sample.B08 - sample.B04) / denom : 0.0)}const maxNDVIcolors = [[-0.2, 0xbfbfbf],"
    "[0, 0xebebeb],[0.1, 0xc8c682],[0.2, 0x91bf52],[0.4, 0x4f8a2e],[0.6, 0x0f540c]]const visualizer = new "
    "ColorRampVisualizer(maxNDVIcolors);function evaluatePixel(samples) {var max = 0for (var i = 0; i < "
    "samples.length; i++) {var ndvi = calcNDVI(samples[i])max = ndvi > max ? ndvi : max}ndvi = maxreturn "
    "visualizer.process(ndvi)}"
)


def seed_payload(bucket: str = "<MyBucket>") -> dict:
    return {
        "processRequest": {
            "input": {
                "bounds": {
                    "bbox": [8.44, 41.31, 9.66, 43.1],
                    "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
                },
                "data": [
                    {
                        "dataFilter": {
                            "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"},
                            "maxCloudCoverage": 70.0,
                        },
                        "type": "S2L2A",
                    }
                ],
            },
            "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
            "evalscript": EVALSCRIPT,
        },
        "tilingGrid": {"id": 0, "resolution": 60.0},
        "bucketName": bucket,
        "description": "Max NDVI over Corsica",
    }
