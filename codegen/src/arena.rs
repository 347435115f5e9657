//! The memory plan's allocator: offsets in one arena from buffer lifetimes.
//!
//! Buffers whose lifetimes overlap never share bytes; the others may. Placement
//! is "greedy by size" (largest first, lowest offset that fits between the
//! already-placed buffers that are live at the same time), deterministic for a
//! given input, with every offset and extent checked against the arena size.

/// One buffer to place: `bytes` live from step `first` to step `last`
/// (inclusive, in execution order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    fn overlaps(&self, o: &Lifetime) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// Byte alignment of every buffer: a cache line, so SIMD loads never split
/// and two threads never write one line.
pub const ALIGN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Offset of each buffer, in the order given.
    pub offsets: Vec<usize>,
    /// Arena size: the peak of the plan.
    pub size: usize,
    /// Sum of all buffer sizes, what a plan without reuse would need.
    pub unshared: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

pub fn plan(bufs: &[Lifetime]) -> ArenaPlan {
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    // Largest first; ties by first use, then index, so the plan is deterministic.
    order.sort_by(|&a, &b| {
        bufs[b]
            .bytes
            .cmp(&bufs[a].bytes)
            .then(bufs[a].first.cmp(&bufs[b].first))
            .then(a.cmp(&b))
    });
    let mut offsets = vec![0usize; bufs.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut size = 0usize;
    for &i in &order {
        let need = align(bufs[i].bytes.max(1));
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| bufs[j].overlaps(&bufs[i]))
            .map(|&j| (offsets[j], offsets[j] + align(bufs[j].bytes.max(1))))
            .collect();
        busy.sort_unstable();
        let mut at = 0usize;
        for (start, end) in busy {
            if at + need <= start {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        size = size.max(at + need);
        placed.push(i);
    }
    ArenaPlan {
        offsets,
        size,
        unshared: bufs.iter().map(|b| align(b.bytes.max(1))).sum(),
    }
}

/// Checks a plan: every buffer inside the arena and no two live-together
/// buffers sharing a byte. The code generator relies on this before it emits
/// a single load or store.
pub fn verify(bufs: &[Lifetime], p: &ArenaPlan) -> Result<(), String> {
    for (i, b) in bufs.iter().enumerate() {
        let end = p.offsets[i].checked_add(b.bytes).ok_or("offset overflow")?;
        if end > p.size {
            return Err(format!(
                "buffer {i} [{}, {end}) outside the arena of {} bytes",
                p.offsets[i], p.size
            ));
        }
        for (j, o) in bufs.iter().enumerate().skip(i + 1) {
            let (a0, a1) = (p.offsets[i], end);
            let (b0, b1) = (p.offsets[j], p.offsets[j] + o.bytes);
            if b.overlaps(o) && a0 < b1 && b0 < a1 && b.bytes > 0 && o.bytes > 0 {
                return Err(format!("buffers {i} and {j} are live together and overlap"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lt(bytes: usize, first: usize, last: usize) -> Lifetime {
        Lifetime { bytes, first, last }
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let bufs = [lt(1000, 0, 1), lt(1000, 2, 3), lt(1000, 4, 5)];
        let p = plan(&bufs);
        verify(&bufs, &p).unwrap();
        assert_eq!(p.size, align(1000));
        assert_eq!(p.unshared, 3 * align(1000));
    }

    #[test]
    fn overlapping_lifetimes_do_not() {
        let bufs = [
            lt(100, 0, 5),
            lt(200, 1, 2),
            lt(300, 2, 4),
            lt(50, 3, 3),
            lt(400, 5, 6),
        ];
        let p = plan(&bufs);
        verify(&bufs, &p).unwrap();
        // Peak: at step 2 buffers 0, 1, 2 are live; at step 5, 0 and 4.
        assert!(p.size >= align(100) + align(200) + align(300));
        assert!(p.size < p.unshared);
    }

    #[test]
    fn random_plans_verify() {
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let bufs: Vec<Lifetime> = (0..30)
                .map(|_| {
                    let first = (next() % 40) as usize;
                    lt(
                        (next() % 5000) as usize,
                        first,
                        first + (next() % 10) as usize,
                    )
                })
                .collect();
            let p = plan(&bufs);
            verify(&bufs, &p).unwrap();
        }
    }
}
