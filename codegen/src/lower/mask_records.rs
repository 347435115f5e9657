//! Masks applied by more than one launch share a record of which elements
//! they keep. Augmented dropout applies `B = F ⊙ G` twice in the backward
//! pass, to `x` for the next layer's weight gradient and to `dy` for the
//! input gradient, two tensors of one shape: the first launch hashes both
//! factors and writes one byte per element, the second reads those bytes
//! instead of hashing again (a fifth of a byte's traffic against two hashes
//! per element).

use crate::conv::{InputMask, KeptBytes};
use crate::schedule::{BufKind, BufRef, Buffer, LaunchKind, NativeOp, Schedule};

/// The mask a native launch applies and the length of the tensor it masks.
fn native_mask(kind: &mut LaunchKind) -> Option<(&mut InputMask, usize)> {
    let (masks, len) = match kind {
        LaunchKind::Native(NativeOp::Conv(c)) => {
            let len = c.images * c.geom.image_len();
            ([&mut c.input_mask, &mut c.output_mask], len)
        }
        LaunchKind::Native(NativeOp::AvgPool(p)) => {
            let len = p.x.len();
            ([&mut p.input_mask, &mut p.output_mask], len)
        }
        _ => return None,
    };
    let [a, b] = masks;
    debug_assert!(a.is_none() || b.is_none(), "a launch applies one mask");
    let m = a.as_mut().or(b.as_mut())?;
    Some((m, len))
}

/// Gives every group of launches that apply the same mask (factors, scale)
/// to tensors of the same length a record: the first writes it, the rest
/// read it. Launches run in schedule order, so the writer runs first.
pub(super) fn share_mask_records(s: &mut Schedule) {
    type Key = (Vec<(u32, i32)>, u32, usize);
    let mut groups: Vec<(Key, Vec<usize>)> = Vec::new();
    for (i, l) in s.launches.iter_mut().enumerate() {
        let Some((m, len)) = native_mask(&mut l.kind) else {
            continue;
        };
        if !m.can_record() {
            continue;
        }
        let key = (m.factors.clone(), m.scale.to_bits(), len);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, launches)) => launches.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    for ((_, _, len), launches) in groups {
        if launches.len() < 2 {
            continue;
        }
        let writer = &s.launches[launches[0]];
        s.buffers.push(Buffer {
            name: format!("{}.kept", writer.nodes.last().expect("a launch has nodes")),
            kind: BufKind::Temp,
            elems: len.div_ceil(4),
            pinned: false,
            offset: 0,
        });
        let record = BufRef(s.buffers.len() as u32 - 1);
        for (j, &i) in launches.iter().enumerate() {
            let l = &mut s.launches[i];
            let (m, _) = native_mask(&mut l.kind).expect("grouped launches mask");
            m.kept = if j == 0 {
                KeptBytes::Write
            } else {
                KeptBytes::Read
            };
            l.args.push(record);
        }
    }
}
