//! The small amount of statistics the reports need: median, min–max and the
//! "ferry is X× faster" ratio. Medians (not means) because a single run
//! disturbed by writeback or another process should not move the headline.

use serde::Serialize;

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median of `xs` (mean of the two middle values for even length); `None`
/// for an empty sample. NaNs sort last (total order) rather than panicking.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let median = median(xs)?;
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(Summary { median, min, max, n: xs.len() })
}

/// `peer / ferry`: for wall time this reads "ferry is X× faster than peer"
/// (values below 1 mean ferry is slower). `None` when ferry's value is not a
/// positive finite number, so a broken run never yields an infinite speedup.
pub fn ratio(peer: f64, ferry: f64) -> Option<f64> {
    if ferry > 0.0 && ferry.is_finite() && peer.is_finite() && peer >= 0.0 {
        Some(peer / ferry)
    } else {
        None
    }
}

/// One-line wording for a wall-time speedup.
pub fn describe_speedup(speedup: f64, peer: &str) -> String {
    if speedup >= 1.0 {
        format!("{speedup:.2}× faster than {peer}")
    } else if speedup > 0.0 {
        format!("{:.2}× slower than {peer} (speedup {speedup:.2}×)", 1.0 / speedup)
    } else {
        format!("not comparable with {peer}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn summary_min_max() {
        let s = summarize(&[2.0, 9.0, 4.0, 1.0, 7.0]).unwrap();
        assert_eq!(s, Summary { median: 4.0, min: 1.0, max: 9.0, n: 5 });
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratio_math() {
        assert_eq!(ratio(10.0, 4.0), Some(2.5));
        assert_eq!(ratio(2.0, 4.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, f64::NAN), None);
        assert_eq!(describe_speedup(2.5, "rsync"), "2.50× faster than rsync");
        assert_eq!(describe_speedup(0.5, "cp"), "2.00× slower than cp (speedup 0.50×)");
    }
}
