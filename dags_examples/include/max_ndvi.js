//VERSION=3
function setup() {
  return {
    input: [{
      bands: ["B04", "B08"]
    }],
    output: [{
      id: "default",
      bands: 3
    }],
    mosaicking: Mosaicking.ORBIT
  }
}

function calcNDVI(sample) {
  var denom = sample.B04 + sample.B08
  return ((denom != 0) ? (sample.B08 - sample.B04) / denom : 0.0)
}

const maxNDVIcolors = [
  [-0.2, 0xbfbfbf],
  [0, 0xebebeb],
  [0.1, 0xc8c682],
  [0.2, 0x91bf52],
  [0.4, 0x4f8a2e],
  [0.6, 0x0f540c]
]

const visualizer = new ColorRampVisualizer(maxNDVIcolors);

function evaluatePixel(samples) {
  var max = 0
  for (var i = 0; i < samples.length; i++) {
    var ndvi = calcNDVI(samples[i])
    max = ndvi > max ? ndvi : max
  }
  ndvi = max
  return visualizer.process(ndvi)
}
