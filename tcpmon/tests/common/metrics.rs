//! Reading Prometheus's text format back, for the `export` tests.

use std::collections::BTreeMap;

/// Every sample of a metrics text: `name{labels}` as written, to its value.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let v = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("{l:?}")),
            };
            (series.to_string(), v)
        })
        .collect()
}

/// The sum of the samples of metric `name` whose labels include every
/// `label="value"` of `with`.
pub fn sum(samples: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| {
            let (n, labels) = s.split_once('{').unwrap_or((s, ""));
            n == name && with.iter().all(|w| labels.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}
