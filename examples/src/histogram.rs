//! The histogram of the scatter/gather example: what the leaves sample and how
//! the merger bins it. The Python leaf and merger (python/) do the same.

/// Number of bins.
pub const BINS: usize = 10;
/// Width of each bin; the bins cover `[0, BINS * WIDTH)`.
pub const WIDTH: f64 = 20.0;
/// How many samples a leaf draws.
pub const SAMPLES: usize = 100;
/// Mean of the leaves' Gaussian.
pub const MEAN: f64 = 100.0;
/// Standard deviation of the leaves' Gaussian.
pub const SIGMA: f64 = 25.0;

/// One sample of the leaves' Gaussian (mean [`MEAN`], sigma [`SIGMA`]),
/// truncated to the histogram's range `[0, 200)` by drawing again: a value
/// beyond four sigmas (about 6 in 100,000 draws) would otherwise be dropped by
/// the merger, and 10 leaves of 100 samples would not always make 1,000.
pub fn sample(rng: &mut impl rand::Rng) -> f64 {
    let normal = rand_distr::Normal::new(MEAN, SIGMA).expect("sigma is finite and positive");
    loop {
        let x = rand_distr::Distribution::sample(&normal, rng);
        if (0.0..BINS as f64 * WIDTH).contains(&x) {
            return x;
        }
    }
}

/// Counts `samples` into [`BINS`] bins of width [`WIDTH`] starting at 0.
/// Values outside `[0, 200)` (and NaN) are dropped: the original example
/// indexed past the last bin with them.
pub fn count(counts: &mut [u64; BINS], samples: impl IntoIterator<Item = f64>) {
    for x in samples {
        // `x / WIDTH` is in [0, BINS) exactly when x is in [0, 200); the
        // comparison is false for NaN, so NaN is dropped too.
        let bin = x / WIDTH;
        if (0.0..BINS as f64).contains(&bin) {
            counts[bin as usize] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_of_width_20() {
        let mut c = [0; BINS];
        count(&mut c, [0.0, 19.999, 20.0, 100.0, 199.99]);
        assert_eq!(c, [2, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn samples_stay_in_the_histogram() {
        let mut rng = rand::rng();
        let mut c = [0; BINS];
        count(&mut c, (0..100_000).map(|_| sample(&mut rng)));
        assert_eq!(c.iter().sum::<u64>(), 100_000);
    }

    #[test]
    fn drops_what_is_outside() {
        let mut c = [0; BINS];
        count(
            &mut c,
            [
                -0.1,
                200.0,
                250.0,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ],
        );
        assert_eq!(c, [0; BINS]);
    }
}
