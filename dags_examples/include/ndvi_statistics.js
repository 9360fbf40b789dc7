//VERSION=3
// NDVI statistics per field: the Statistical API computes mean, percentiles and a histogram of "ndvi" over
// the pixels where "dataMask" is 1 (cloud-free, valid data), per aggregation interval.
function setup() {
  return {
    input: [{bands: ["B04", "B08", "SCL", "dataMask"]}],
    output: [
      {id: "ndvi", bands: 1, sampleType: "FLOAT32"},
      {id: "dataMask", bands: 1}
    ]
  };
}

function isCloudFree(scl) {
  // Sentinel-2 L2A scene classification: 3 cloud shadow, 8-10 clouds and cirrus, 11 snow
  return !(scl === 3 || (scl >= 8 && scl <= 11));
}

function evaluatePixel(samples) {
  var ndvi = index(samples.B08, samples.B04);
  return {
    ndvi: [ndvi],
    dataMask: [samples.dataMask && isCloudFree(samples.SCL) ? 1 : 0]
  };
}
