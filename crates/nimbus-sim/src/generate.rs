//! Workload generator: Poisson or bursty (two-state Markov-modulated Poisson) arrivals,
//! exponential / lognormal / Pareto / fixed durations, a weighted size mix, weighted
//! priorities and declared runtimes (exact, noisy or absent) for `sjf`.

use nimbus_sched::Resources;
use rand::distributions::{Distribution, WeightedIndex};
use rand_distr::{Exp, LogNormal, Pareto, StandardNormal};

use crate::model::Job;
use crate::rng::{stream, Rng};

/// How jobs arrive.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// Exponential inter-arrival times with mean `1 / rate_per_s`.
    Poisson { rate_per_s: f64 },
    /// Alternates between a calm phase (`rate_per_s`) and a burst phase
    /// (`burst_rate_per_s`), each lasting an exponential time with the given mean.
    Bursty {
        rate_per_s: f64,
        burst_rate_per_s: f64,
        mean_burst_s: f64,
        mean_calm_s: f64,
    },
}

/// How long a job runs at full speed.
#[derive(Debug, Clone, PartialEq)]
pub enum DurationDist {
    Exponential {
        mean_s: f64,
    },
    /// `exp(N(mu, sigma))`: median `e^mu`.
    LogNormal {
        mu: f64,
        sigma: f64,
    },
    /// Minimum `scale_s`, tail index `shape` (heavier below 2).
    Pareto {
        scale_s: f64,
        shape: f64,
    },
    Fixed {
        value_s: f64,
    },
}

impl DurationDist {
    /// The distribution's mean (infinite for a Pareto with shape <= 1).
    pub fn mean(&self) -> f64 {
        match *self {
            DurationDist::Exponential { mean_s } => mean_s,
            DurationDist::LogNormal { mu, sigma } => (mu + sigma * sigma / 2.0).exp(),
            DurationDist::Pareto { scale_s, shape } if shape > 1.0 => {
                shape * scale_s / (shape - 1.0)
            }
            DurationDist::Pareto { .. } => f64::INFINITY,
            DurationDist::Fixed { value_s } => value_s,
        }
    }
}

/// One entry of the size mix.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeClass {
    pub resources: Resources,
    /// Relative frequency.
    pub weight: f64,
    /// Fraction of its reserved cpu the job keeps busy (time-shared model).
    pub cpu_utilization: f64,
}

/// What runtime submitters declare (the `sjf` queue orders by it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeclaredRuntime {
    /// The true duration, rounded up to whole seconds (an oracle).
    Exact,
    /// The true duration times `exp(N(0, sigma))`: a user's estimate.
    Noisy { sigma: f64 },
    /// Nothing declared: `sjf` degenerates to fcfs.
    None,
}

impl DeclaredRuntime {
    /// The declared runtime of a job that really runs `duration_s`.
    pub fn declare(&self, duration_s: f64, rng: &mut Rng) -> Option<u64> {
        if !duration_s.is_finite() {
            return None;
        }
        let d = match *self {
            DeclaredRuntime::Exact => duration_s,
            DeclaredRuntime::Noisy { sigma } => {
                let z: f64 = StandardNormal.sample(rng);
                duration_s * (sigma * z).exp()
            }
            DeclaredRuntime::None => return None,
        };
        Some(secs_ceil(d))
    }
}

/// Whole seconds, rounded up, at least 1, saturating.
pub(crate) fn secs_ceil(d: f64) -> u64 {
    let c = d.ceil();
    if c.is_nan() || c < 1.0 {
        1
    } else if c >= u64::MAX as f64 {
        u64::MAX
    } else {
        c as u64
    }
}

/// A synthetic workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub jobs: u64,
    pub arrival: Arrival,
    pub duration: DurationDist,
    /// Durations are capped here (a truncated distribution), if set.
    pub max_duration_s: Option<f64>,
    pub sizes: Vec<SizeClass>,
    /// `(priority, weight)`.
    pub priorities: Vec<(i32, f64)>,
    pub declared: DeclaredRuntime,
}

/// The jobs of `g` under `seed`, in arrival order. Each aspect draws from its own stream
/// (see [`crate::rng`]).
///
/// Weights are validated by the scenario parser; invalid ones (all zero) fall back to
/// the first entry rather than failing.
pub fn generate(g: &Generator, seed: u64) -> Vec<Job> {
    let n = usize::try_from(g.jobs).unwrap_or(usize::MAX);
    let arrivals = arrival_times(&g.arrival, n, &mut stream(seed, "arrivals", 0));
    let mut dur_rng = stream(seed, "durations", 0);
    let mut size_rng = stream(seed, "sizes", 0);
    let mut prio_rng = stream(seed, "priorities", 0);
    let mut decl_rng = stream(seed, "declared-runtimes", 0);
    let sizes = WeightedIndex::new(g.sizes.iter().map(|s| s.weight)).ok();
    let prios = WeightedIndex::new(g.priorities.iter().map(|p| p.1)).ok();
    let mut jobs = Vec::with_capacity(n);
    for arrival_s in arrivals {
        let mut duration_s = sample_duration(&g.duration, &mut dur_rng);
        if let Some(max) = g.max_duration_s {
            duration_s = duration_s.min(max);
        }
        let size = match (&sizes, g.sizes.first()) {
            (Some(w), _) => &g.sizes[w.sample(&mut size_rng)],
            (None, Some(first)) => first,
            (None, None) => &DEFAULT_SIZE,
        };
        let priority = match &prios {
            Some(w) => g.priorities[w.sample(&mut prio_rng)].0,
            None => g.priorities.first().map_or(0, |p| p.0),
        };
        let declared = g.declared.declare(duration_s, &mut decl_rng);
        jobs.push(Job {
            arrival_s,
            duration_s,
            resources: size.resources,
            cpu_demand_millis: (size.resources.cpu_millis as f64 * size.cpu_utilization).round()
                as u64,
            priority,
            declared_runtime_secs: declared,
            initial_host: None,
        });
    }
    jobs
}

const DEFAULT_SIZE: SizeClass = SizeClass {
    resources: Resources::new(1000, 1024, 0),
    weight: 1.0,
    cpu_utilization: 1.0,
};

fn sample_duration(d: &DurationDist, rng: &mut Rng) -> f64 {
    match *d {
        DurationDist::Exponential { mean_s } => match Exp::new(1.0 / mean_s) {
            Ok(e) => e.sample(rng),
            Err(_) => mean_s,
        },
        DurationDist::LogNormal { mu, sigma } => match LogNormal::new(mu, sigma) {
            Ok(l) => l.sample(rng),
            Err(_) => mu.exp(),
        },
        DurationDist::Pareto { scale_s, shape } => match Pareto::new(scale_s, shape) {
            Ok(p) => p.sample(rng),
            Err(_) => scale_s,
        },
        DurationDist::Fixed { value_s } => value_s,
    }
}

/// `n` arrival times under `a`, ascending, starting after 0.
pub fn arrival_times(a: &Arrival, n: usize, rng: &mut Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let exp = |rate: f64, rng: &mut Rng| match Exp::new(rate) {
        Ok(e) => e.sample(rng),
        Err(_) => f64::INFINITY,
    };
    match *a {
        Arrival::Poisson { rate_per_s } => {
            let mut t = 0.0;
            for _ in 0..n {
                t += exp(rate_per_s, rng);
                out.push(t);
            }
        }
        Arrival::Bursty {
            rate_per_s,
            burst_rate_per_s,
            mean_burst_s,
            mean_calm_s,
        } => {
            let mut t = 0.0;
            let mut burst = false;
            let mut switch_at = exp(1.0 / mean_calm_s, rng);
            while out.len() < n {
                let rate = if burst { burst_rate_per_s } else { rate_per_s };
                let next = t + exp(rate, rng);
                if next <= switch_at {
                    t = next;
                    out.push(t);
                } else {
                    // Memoryless: restart the inter-arrival draw at the phase change.
                    t = switch_at;
                    burst = !burst;
                    let mean = if burst { mean_burst_s } else { mean_calm_s };
                    switch_at = t + exp(1.0 / mean, rng);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(arrival: Arrival, duration: DurationDist, n: u64) -> Vec<Job> {
        let g = Generator {
            jobs: n,
            arrival,
            duration,
            max_duration_s: None,
            sizes: vec![
                SizeClass {
                    resources: Resources::new(1000, 1024, 0),
                    weight: 3.0,
                    cpu_utilization: 1.0,
                },
                SizeClass {
                    resources: Resources::new(4000, 8192, 0),
                    weight: 1.0,
                    cpu_utilization: 0.5,
                },
            ],
            priorities: vec![(0, 1.0), (10, 1.0)],
            declared: DeclaredRuntime::Exact,
        };
        generate(&g, 7)
    }

    #[test]
    fn poisson_rate_and_exponential_mean() {
        let n = 200_000;
        let jobs = gen(
            Arrival::Poisson { rate_per_s: 4.0 },
            DurationDist::Exponential { mean_s: 10.0 },
            n,
        );
        let last = jobs.last().unwrap().arrival_s;
        let rate = n as f64 / last;
        assert!((rate - 4.0).abs() / 4.0 < 0.01, "rate {rate}");
        let mean = jobs.iter().map(|j| j.duration_s).sum::<f64>() / n as f64;
        assert!((mean - 10.0).abs() / 10.0 < 0.01, "mean {mean}");
        let big = jobs
            .iter()
            .filter(|j| j.resources.cpu_millis == 4000)
            .count();
        let frac = big as f64 / n as f64;
        assert!((frac - 0.25).abs() < 0.01, "size mix {frac}");
        assert!(jobs
            .iter()
            .filter(|j| j.resources.cpu_millis == 4000)
            .all(|j| j.cpu_demand_millis == 2000));
        assert!(jobs.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
        assert!(jobs
            .iter()
            .all(|j| j.declared_runtime_secs == Some(secs_ceil(j.duration_s))));
    }

    #[test]
    fn lognormal_and_pareto_means() {
        let n = 200_000;
        let (mu, sigma) = (3.0_f64, 0.5_f64);
        let ln = DurationDist::LogNormal { mu, sigma };
        let jobs = gen(Arrival::Poisson { rate_per_s: 1.0 }, ln.clone(), n);
        let mean = jobs.iter().map(|j| j.duration_s).sum::<f64>() / n as f64;
        assert!(
            (mean - ln.mean()).abs() / ln.mean() < 0.01,
            "lognormal {mean}"
        );
        let p = DurationDist::Pareto {
            scale_s: 2.0,
            shape: 3.0,
        };
        let jobs = gen(Arrival::Poisson { rate_per_s: 1.0 }, p.clone(), n);
        assert!(jobs.iter().all(|j| j.duration_s >= 2.0));
        let mean = jobs.iter().map(|j| j.duration_s).sum::<f64>() / n as f64;
        assert!((mean - p.mean()).abs() / p.mean() < 0.02, "pareto {mean}");
    }

    #[test]
    fn bursty_average_rate() {
        // Calm 1/s for 90 s on average, bursts 10/s for 10 s: mean rate 1.9/s.
        let a = Arrival::Bursty {
            rate_per_s: 1.0,
            burst_rate_per_s: 10.0,
            mean_burst_s: 10.0,
            mean_calm_s: 90.0,
        };
        let n = 400_000;
        let t = arrival_times(&a, n, &mut stream(3, "arrivals", 0));
        let rate = n as f64 / t[n - 1];
        assert!((rate - 1.9).abs() / 1.9 < 0.03, "rate {rate}");
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn same_seed_same_workload() {
        let a = || {
            gen(
                Arrival::Poisson { rate_per_s: 1.0 },
                DurationDist::Fixed { value_s: 5.0 },
                1000,
            )
        };
        assert_eq!(a(), a());
    }
}
