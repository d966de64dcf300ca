//! Seeded synthetic data for the benchmarks: clustered vectors, as real embeddings are (uniform
//! random vectors have no neighbourhoods, which makes recall meaningless).

use rand::Rng;
use rand::rngs::StdRng;

/// A standard normal sample (Box–Muller).
pub fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// `v` scaled to length 1.
pub fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// A unit vector near `center`: Gaussian noise of `spread` per component, normalized.
pub fn around(center: &[f32], spread: f32, rng: &mut StdRng) -> Vec<f32> {
    unit(center.iter().map(|c| c + spread * gaussian(rng)).collect())
}

/// `n` random unit centers of `dims` dimensions.
pub fn centers(n: usize, dims: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    (0..n).map(|_| unit((0..dims).map(|_| gaussian(rng)).collect())).collect()
}
