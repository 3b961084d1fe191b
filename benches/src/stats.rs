//! The few statistics the benchmark reports print: quantiles, the median, the mean and the
//! spread of a handful of rounds.
//!
//! Both drivers (`flamegrid-e2e` and `flamegrid-compare`) summarise rounds with these functions,
//! so a "median" means the same thing in every report of this crate, and the same thing as in
//! the agent's `--stats` output that `flamegrid-compare` quotes beside its own figures.
//!
//! Rounds are few (3 to 20) and shared machines are noisy, so the quantiles pick a measured
//! value instead of interpolating between two: a figure in a report is always a time or a rate
//! that really happened. The rule is the one the agent uses: sort, then take the value at index
//! `round((n − 1) · q)`. So `q = 0` is the minimum, `q = 1` the maximum, and the median of an
//! even count is the upper of the two middle values.
//!
//! Empty input gives `NaN` rather than a panic or a made-up zero: the reports print it as a
//! dash or "NaN", which is what an unmeasured figure should look like.

/// The `q` quantile (`q` clamped to 0..=1) of `values`: the value at index `round((n − 1) · q)`
/// once sorted; `NaN` for no values.
///
/// `NaN`s among the values sort last (by [`f64::total_cmp`]), so they only show in the top
/// quantiles.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[rank]
}

/// The median of `values` ([`quantile`] 0.5: the upper middle value of an even count); `NaN`
/// for no values.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The arithmetic mean of `values`; `NaN` for no values.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The smallest and the largest of a set of rounds: how far apart the runs of one
/// measurement landed, printed as "min–max" beside a median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The smallest value ([`quantile`] 0).
    pub min: f64,
    /// The largest value ([`quantile`] 1).
    pub max: f64,
}

/// The [`Spread`] of `values`; both ends `NaN` for no values.
pub fn spread(values: &[f64]) -> Spread {
    Spread {
        min: quantile(values, 0.0),
        max: quantile(values, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_value_at_the_rounded_index() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.9), 5.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        // Out-of-range q is clamped, not an index out of bounds.
        assert_eq!(quantile(&v, -1.0), 1.0);
        assert_eq!(quantile(&v, 7.0), 5.0);
        // Four values: index round(3 · 0.25) = round(0.75) = 1.
        assert_eq!(quantile(&[40.0, 10.0, 30.0, 20.0], 0.25), 20.0);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_upper_middle_value() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[2.0, 1.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&[7.5]), 7.5);
    }

    #[test]
    fn the_input_order_is_left_alone() {
        let v = vec![3.0, 1.0, 2.0];
        assert_eq!(median(&v), 2.0);
        assert_eq!(v, [3.0, 1.0, 2.0]);
    }

    #[test]
    fn nans_sort_last() {
        let v = [f64::NAN, 1.0, 2.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(median(&v), 2.0);
        assert!(quantile(&v, 1.0).is_nan());
    }

    #[test]
    fn mean_and_spread_of_small_inputs() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
        assert_eq!(mean(&[-1.5]), -1.5);
        assert_eq!(
            spread(&[4.0, -2.0, 9.5, 0.0]),
            Spread {
                min: -2.0,
                max: 9.5
            }
        );
    }

    #[test]
    fn empty_input_is_nan_everywhere() {
        assert!(quantile(&[], 0.3).is_nan());
        assert!(median(&[]).is_nan());
        assert!(mean(&[]).is_nan());
        let s = spread(&[]);
        assert!(s.min.is_nan() && s.max.is_nan());
    }
}
