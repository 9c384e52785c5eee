//! Calibration ranges against a numpy reference computed from the full tensors
//! (`tests/py/range_reference.py`).
//!
//! Synthetic tensors (seeded) are observed in uneven chunks, as if they came from several
//! samples; the streaming statistics must equal those of all values at once. Percentile ranges
//! must match `np.percentile` within one bin width; the entropy and MSE ranges must score within
//! 1 % of the reference's brute-force optimum of the same objective (KL on the same |x| grid; true
//! mean squared fake-quantization error over all values), and on the long-tailed tensor they must
//! lie strictly inside the MinMax range.

mod common;

use ndarray::Array1;
use onnx_ptq::calibrate::observer::{Histogram, MinMax, DEFAULT_BINS};
use onnx_ptq::calibrate::range::{compute_range, QuantTarget, RangeMethod};
use serde_json::{json, Value};

/// splitmix64, with Box–Muller normals.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const N: usize = 1 << 18;

/// The named tensors: gaussian, long-tailed, ReLU-like, uniform and laplace.
fn fixtures() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = Rng(20_240_601);
    let gaussian: Vec<f32> = (0..N).map(|_| (0.1 + 0.8 * rng.normal()) as f32).collect();
    let mut long_tail: Vec<f32> = (0..N).map(|_| rng.normal() as f32).collect();
    for k in 0..8 {
        // 8 outliers at 50 to 55 sigma, on both sides, at random places.
        let at = (rng.next_u64() % N as u64) as usize;
        let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
        long_tail[at] = (sign * (50.0 + 5.0 * rng.uniform())) as f32;
    }
    let relu: Vec<f32> = (0..N)
        .map(|_| (rng.normal() * 2.0).max(0.0) as f32)
        .collect();
    let uniform: Vec<f32> = (0..N)
        .map(|_| (-1.0 + 4.0 * rng.uniform()) as f32)
        .collect();
    let laplace: Vec<f32> = (0..N)
        .map(|_| {
            let u = rng.uniform() - 0.5;
            (-0.5 * u.signum() * (1.0 - 2.0 * u.abs()).ln()) as f32
        })
        .collect();
    vec![
        ("gaussian", gaussian),
        ("long_tail", long_tail),
        ("relu", relu),
        ("uniform", uniform),
        ("laplace", laplace),
    ]
}

/// Observes `values` in uneven chunks, like a calibration run over several samples, and checks
/// that the result does not depend on the split.
fn observe(values: &[f32], seed: u64) -> (MinMax, Histogram) {
    let mut rng = Rng(seed);
    let mut minmax = MinMax::new();
    let mut streamed = Histogram::new(DEFAULT_BINS);
    let mut merged = Histogram::new(DEFAULT_BINS);
    let mut rest = values;
    while !rest.is_empty() {
        let take = ((rng.next_u64() % (N as u64 / 3)) as usize + 1).min(rest.len());
        let (sample, tail) = rest.split_at(take);
        minmax.observe(sample);
        streamed.observe(sample);
        let mut own = Histogram::new(DEFAULT_BINS);
        own.observe(sample);
        merged.merge(&own);
        rest = tail;
    }
    let mut all_minmax = MinMax::new();
    all_minmax.observe(values);
    let mut all = Histogram::new(DEFAULT_BINS);
    all.observe(values);
    assert_eq!(minmax, all_minmax);
    assert_eq!(
        streamed.counts(),
        all.counts(),
        "streamed histogram differs from all-at-once"
    );
    assert_eq!(streamed, all);
    assert_eq!(merged, all, "merged histogram differs from all-at-once");
    assert_eq!(all.total(), values.len() as u64);
    (minmax, streamed)
}

struct Check {
    tensor: &'static str,
    target_name: &'static str,
    method: RangeMethod,
    range: (f32, f32),
    minmax: (f32, f32),
    bin_width: f32,
    elapsed: std::time::Duration,
}

#[test]
fn ranges_match_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    let u8_asym = ("u8", QuantTarget::U8);
    let s8_sym = ("s8sym", QuantTarget::S8_SYMMETRIC);
    let methods = [
        RangeMethod::Percentile { percentile: 99.999 },
        RangeMethod::Percentile { percentile: 99.9 },
        RangeMethod::Entropy,
        RangeMethod::Mse,
    ];
    let mut checks = Vec::new();
    let mut requests = String::new();
    for (seed, (name, values)) in fixtures().into_iter().enumerate() {
        let (minmax, histogram) = observe(&values, seed as u64 + 1);
        let path = dir.path().join(format!("{name}.npy"));
        ndarray_npy::write_npy(&path, &Array1::from(values)).unwrap();
        for (target_name, target) in [u8_asym, s8_sym] {
            for method in methods {
                let started = std::time::Instant::now();
                let range = compute_range(&method, &minmax, Some(&histogram), &target).unwrap();
                let elapsed = started.elapsed();
                let percentile = match method {
                    RangeMethod::Percentile { percentile } => percentile,
                    _ => 99.999,
                };
                let request = json!({
                    "values": path, "method": method.name(), "bits": target.bits,
                    "signed": target.signed, "symmetric": target.symmetric,
                    "percentile": percentile, "bins": DEFAULT_BINS, "ours": [range.0, range.1],
                });
                requests.push_str(&format!("{request}\n"));
                checks.push(Check {
                    tensor: name,
                    target_name,
                    method,
                    range,
                    minmax: (minmax.min, minmax.max),
                    bin_width: histogram.bin_width(),
                    elapsed,
                });
            }
        }
    }
    let out = common::run_python("range_reference.py", &["--jsonl"], &requests);
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), checks.len(), "one answer per request");

    let mut failures = Vec::new();
    eprintln!(
        "tensor     target method      ours                      reference                 time      result"
    );
    for (c, a) in checks.iter().zip(&answers) {
        let get = |k: &str| a[k].as_f64();
        let (ref_lo, ref_hi) = (get("ref_lo").unwrap(), get("ref_hi").unwrap());
        let label = match c.method {
            RangeMethod::Percentile { percentile } => format!("p{percentile}"),
            m => m.name().to_string(),
        };
        let (ok, result) = match c.method {
            RangeMethod::Percentile { .. } => {
                let (e_lo, e_hi) = (get("err_lo").unwrap(), get("err_hi").unwrap());
                let slack = |x: f32| f64::from(c.bin_width) + f64::from(x.abs() * f32::EPSILON);
                let ok = e_lo <= slack(c.range.0) && e_hi <= slack(c.range.1);
                let bins = e_lo.max(e_hi) / f64::from(c.bin_width);
                (ok, format!("error {bins:.3} bin widths"))
            }
            _ => {
                let (ours, best) = (get("ours_objective"), get("ref_objective"));
                let ratio = ours.zip(best).map(|(o, b)| {
                    if b > 0.0 {
                        o / b
                    } else if o == 0.0 {
                        1.0
                    } else {
                        f64::INFINITY
                    }
                });
                let mut text = format!("objective ratio {:.5}", ratio.unwrap_or(f64::NAN));
                if c.method == RangeMethod::Entropy {
                    let u = &a["uniform"];
                    let uni = u["ours_objective"]
                        .as_f64()
                        .zip(u["ref_objective"].as_f64())
                        .map(|(o, b)| o / b);
                    text += &format!(
                        " (uniform 2048-bin grid: {})",
                        uni.map_or("inf".into(), |r| format!("{r:.4}"))
                    );
                }
                (ratio.is_some_and(|r| r <= 1.01), text)
            }
        };
        let inside = c.range.0 > c.minmax.0 && c.range.1 < c.minmax.1;
        let must_be_inside =
            c.tensor == "long_tail" && matches!(c.method, RangeMethod::Entropy | RangeMethod::Mse);
        let ok = ok && (inside || !must_be_inside);
        eprintln!(
            "{:10} {:6} {:11} ({:>10.5}, {:>10.5})  ({:>10.5}, {:>10.5})  {:>7.2}ms {}{}",
            c.tensor,
            c.target_name,
            label,
            c.range.0,
            c.range.1,
            ref_lo,
            ref_hi,
            c.elapsed.as_secs_f64() * 1e3,
            result,
            if ok { "" } else { "  <-- FAIL" }
        );
        if !ok {
            failures.push(format!(
                "{} {} {label}: {result}, range {:?}, minmax {:?}",
                c.tensor, c.target_name, c.range, c.minmax
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
