//! Pruning profiles: free resources plus joint scores, so index trees skip whole subtrees.

use crate::Resources;

/// Number of values in a profile: memory, cpu, disk and the [`JOINT`] scores.
pub(crate) const WIDTH: usize = 3 + JOINT.len();

/// A profile (see [`profile`]).
pub(crate) type Amounts = [u64; WIDTH];

/// Weights `[memory, cpu, disk]` of the joint scores of [`profile`]: each scores
/// `min(x * w)` over the dimensions with a non-zero weight, `x` being free memory MiB, cpu
/// millicores and disk MiB. A request is "balanced" for a score when all its weighted
/// dimensions are equal; the weights form geometric grids of memory per core and disk per
/// core (1 GiB per core = 1.024 MiB per millicore), so every request has a score near its
/// own shape.
const JOINT: [[u64; 3]; 24] = {
    /// memory and cpu: `g` GiB per core.
    const fn mem_cpu(g_num: u64, g_den: u64) -> [u64; 3] {
        [1000 * g_den, 1024 * g_num, 0]
    }
    /// memory and disk: `r` GiB disk per GiB memory.
    const fn mem_disk(r_num: u64, r_den: u64) -> [u64; 3] {
        [r_num, 0, r_den]
    }
    /// cpu and disk: `g` GiB disk per core.
    const fn cpu_disk(g: u64) -> [u64; 3] {
        [0, 1024 * g, 1000]
    }
    /// All three: `m` GiB memory and `d` GiB disk per core.
    const fn all(m: u64, d: u64) -> [u64; 3] {
        [1000 * d, 1024 * m * d, 1000 * m]
    }
    [
        mem_cpu(1, 2),
        mem_cpu(1, 1),
        mem_cpu(2, 1),
        mem_cpu(4, 1),
        mem_cpu(8, 1),
        mem_cpu(16, 1),
        mem_disk(1, 4),
        mem_disk(1, 1),
        mem_disk(4, 1),
        mem_disk(16, 1),
        mem_disk(64, 1),
        cpu_disk(2),
        cpu_disk(8),
        cpu_disk(32),
        cpu_disk(128),
        // Pairs cannot see three-way fragmentation (one node out of memory, one out of
        // cpu, one out of disk): these can.
        all(1, 2),
        all(1, 16),
        all(1, 128),
        all(4, 2),
        all(4, 16),
        all(4, 128),
        all(16, 2),
        all(16, 16),
        all(16, 128),
    ]
};

/// The amounts of `r` the index trees keep per node and per subtree (as maxima): memory,
/// cpu, disk, then the [`JOINT`] scores.
///
/// Every value is monotone in `r`, so a node that holds a request has every value >= the
/// request's: a subtree whose maximum is below the request's in any value holds no fitting
/// node and is skipped (sound pruning). Per-dimension maxima alone cannot tell a subtree
/// with one node rich in memory and another rich in cpu from one with a node rich in both;
/// a joint score near the request's own ratio can, since its maximum comes from a single
/// node. This keeps first-fit from scanning the filled, fragmented prefix of the cluster,
/// and best-/worst-fit from scanning nodes that have memory but lack cpu or disk.
pub(crate) fn profile(r: Resources) -> Amounts {
    let x = [r.memory_mib, r.cpu_millis, r.disk_mib];
    let mut p = [0; WIDTH];
    p[..3].copy_from_slice(&x);
    for (k, w) in JOINT.into_iter().enumerate() {
        p[3 + k] = (0..3)
            .filter(|&d| w[d] > 0)
            .map(|d| x[d].saturating_mul(w[d]))
            .min()
            .unwrap_or(0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_request_scores_equal_its_dimensions() {
        // 4 GiB per core with 16 GiB disk per core: balanced for all(4, 16).
        let p = profile(Resources::new(2000, 8 * 1024, 32 * 1024));
        assert_eq!(&p[..3], &[8 * 1024, 2000, 32 * 1024]);
        let all_4_16 = JOINT
            .iter()
            .position(|w| *w == [16_000, 1024 * 64, 4000])
            .unwrap();
        let s = p[3 + all_4_16];
        assert_eq!(s, 8 * 1024 * 16_000);
        assert_eq!(s, 2000 * 1024 * 64);
        assert_eq!(s, 32 * 1024 * 4000);
    }

    #[test]
    fn profiles_are_monotone() {
        let small = Resources::new(1000, 512, 10);
        let bigger = [
            Resources::new(1001, 512, 10),
            Resources::new(1000, 513, 10),
            Resources::new(1000, 512, 11),
            Resources::new(u64::MAX, u64::MAX, u64::MAX),
        ];
        for b in bigger {
            let (ps, pb) = (profile(small), profile(b));
            assert!(ps.iter().zip(&pb).all(|(s, b)| s <= b), "{b:?}");
        }
    }

    #[test]
    fn a_node_missing_one_dimension_scores_zero_jointly() {
        // Out of disk: every score involving disk is 0, so a subtree of such nodes is
        // skipped for any request needing disk, whatever its memory and cpu.
        let p = profile(Resources::new(64_000, 256 * 1024, 0));
        for (k, w) in JOINT.iter().enumerate() {
            assert_eq!(p[3 + k] == 0, w[2] > 0, "{w:?}");
        }
    }
}
