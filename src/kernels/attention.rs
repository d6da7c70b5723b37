//! Multi-head self-attention read straight from the fused q/k/v projection's output.
//!
//! Candle's path reshapes `[b, t, 3, h, hd]` to `[3, b, h, t, hd]` (a copy), runs two batched
//! matrix products of tiny matrices (t × hd × t per head), a softmax pass and a transpose back
//! (another copy). Here each sequence is one task: for each head and query row, the scores
//! against every key, the softmax and the weighted sum of the values, written to the row's place
//! in the `[b·tq, d]` output that `out_proj` reads. The work is a few percent of the encoder's;
//! what this saves is the copies and the passes.

use rayon::prelude::*;

use super::elementwise;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    /// Positions per sequence (keys and values).
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// The query rows attention is computed for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queries<'a> {
    /// Every position: the output has `batch · seq` rows.
    All,
    /// One position per sequence (the pooled token of the last layer): `batch` rows.
    Rows(&'a [usize]),
}

/// `softmax(q·kᵀ · scale + mask) · v` per head. `qkv` is `[batch·seq, 3·d]`, each row q, k, v
/// with the heads side by side (transformers' `q_proj`, `k_proj`, `v_proj` outputs
/// concatenated); `mask`, when given, is `[seq, seq]`, added to the scores of the query at
/// position i from row i; `out` is `[batch·tq, d]`, `tq` = `seq` or 1 by `queries`.
pub(crate) fn attention(
    qkv: &[f32],
    shape: AttentionShape,
    queries: Queries,
    mask: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), String> {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim,
    } = shape;
    let d = heads * head_dim;
    let tq = match queries {
        Queries::All => seq,
        Queries::Rows(rows) => {
            if rows.len() != batch || rows.iter().any(|&r| r >= seq) {
                return Err(format!(
                    "attention: {} query rows for {batch} sequences of {seq}",
                    rows.len()
                ));
            }
            1
        }
    };
    if qkv.len() != batch * seq * 3 * d || out.len() != batch * tq * d {
        return Err(format!(
            "attention: buffers of {} and {} values for {batch} x {seq} x {heads} x {head_dim}",
            qkv.len(),
            out.len()
        ));
    }
    if mask.is_some_and(|m| m.len() != seq * seq) {
        return Err(format!("attention: the mask is not {seq} x {seq}"));
    }
    let scale = (head_dim as f32).powf(-0.5);
    out.par_chunks_mut(tq * d)
        .enumerate()
        .for_each(|(bi, out_seq)| {
            let job = Sequence {
                qkv: &qkv[bi * seq * 3 * d..(bi + 1) * seq * 3 * d],
                seq,
                heads,
                head_dim,
                scale,
                mask,
                query: match queries {
                    Queries::All => None,
                    Queries::Rows(rows) => Some(rows[bi]),
                },
            };
            attend(&job, out_seq);
        });
    Ok(())
}

/// One sequence's share of [`attention`].
struct Sequence<'a> {
    qkv: &'a [f32],
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    mask: Option<&'a [f32]>,
    /// The one query position, or every position.
    query: Option<usize>,
}

elementwise::dispatch! {
    /// Attention for one sequence, every head, into its rows of the output.
    fn attend(job: &Sequence, out: &mut [f32]) = attend_row;
}

/// Query rows computed together: each key (and value) vector loaded serves this many rows, and
/// the rows' accumulators are independent chains (one row alone waits on the FMA latency).
/// Measured: 4 rows at a time made attention ~2.5× faster than one.
const QB: usize = 4;

#[inline(always)]
fn attend_row(job: &Sequence, out: &mut [f32]) {
    let Sequence {
        qkv,
        seq,
        heads,
        head_dim: hd,
        scale,
        mask,
        query,
    } = *job;
    let d = heads * hd;
    let stride = 3 * d;
    // Per head: kᵀ (`[hd, padded]`, zero-padded to whole groups of 64 keys), so that each
    // query's scores are vector updates over the keys, one per q component, instead of `seq` dot
    // products that each end in a horizontal sum; and v, contiguous.
    let padded = seq.next_multiple_of(64);
    let mut kt = vec![0.0f32; hd * padded];
    let mut v = vec![0.0f32; seq * hd];
    let mut scores = vec![0.0f32; QB * padded];
    let positions: Vec<usize> = match query {
        Some(p) => vec![p],
        None => (0..seq).collect(),
    };
    for h in 0..heads {
        // kᵀ row by row: contiguous stores, strided loads (which vectorise as gathers; the
        // other order, column by column, compiled to scatters, most of attention's own time).
        let keys = &qkv[d + h * hd..];
        for (c, kt_c) in kt.chunks_exact_mut(padded).enumerate() {
            for (j, dst) in kt_c[..seq].iter_mut().enumerate() {
                *dst = keys[j * stride + c];
            }
        }
        for (j, vj) in v.chunks_exact_mut(hd).enumerate() {
            let row = &qkv[j * stride..(j + 1) * stride];
            vj.copy_from_slice(&row[2 * d + h * hd..2 * d + (h + 1) * hd]);
        }
        for (block, rows) in positions.chunks(QB).enumerate() {
            // A short last block repeats its last row (computed, never stored). (Filled in a
            // loop: `array::from_fn` here was an out-of-line call whose result, copied back
            // through the stack, stalled on store forwarding: a third of attention's time.)
            let mut q: [&[f32]; QB] = [&[]; QB];
            for (r, q) in q.iter_mut().enumerate() {
                let pos = rows[r.min(rows.len() - 1)];
                *q = &qkv[pos * stride + h * hd..pos * stride + (h + 1) * hd];
            }
            query_scores(&q, &kt, &mut scores);
            for (r, &pos) in rows.iter().enumerate() {
                let s = &mut scores[r * padded..r * padded + seq];
                match mask {
                    Some(m) => {
                        for (s, &mv) in s.iter_mut().zip(&m[pos * seq..(pos + 1) * seq]) {
                            *s = *s * scale + mv;
                        }
                    }
                    None => s.iter_mut().for_each(|s| *s *= scale),
                }
                elementwise::softmax(s);
            }
            let mut p: [&[f32]; QB] = [&[]; QB];
            for (r, p) in p.iter_mut().enumerate() {
                let r = r.min(rows.len() - 1);
                *p = &scores[r * padded..r * padded + seq];
            }
            let mut outs: Vec<&mut [f32]> = out
                .chunks_mut(d)
                .skip(block * QB)
                .take(rows.len())
                .map(|row| &mut row[h * hd..(h + 1) * hd])
                .collect();
            weighted_sum(&p, &v, &mut outs);
        }
    }
}

/// `scores[r·padded + j] = q[r] · kⱼ` for each of the QB query rows and every (padded) key, from
/// `kt` = kᵀ, `[hd, padded]`; padded is a multiple of 64 and scores holds QB × padded values.
fn query_scores(q: &[&[f32]; QB], kt: &[f32], scores: &mut [f32]) {
    let hd = q[0].len();
    let padded = kt.len() / hd.max(1);
    assert!(
        padded.is_multiple_of(64)
            && kt.len() == hd * padded
            && q.iter().all(|r| r.len() == hd)
            && scores.len() == QB * padded
    );
    #[cfg(target_arch = "x86_64")]
    if elementwise::has_avx512() {
        // SAFETY: the CPU has AVX-512 F (checked); the lengths were asserted just above.
        unsafe { query_scores_avx512(q, kt, scores) };
        return;
    }
    query_scores_portable(q, kt, scores);
}

fn query_scores_portable(q: &[&[f32]; QB], kt: &[f32], scores: &mut [f32]) {
    let padded = scores.len() / QB;
    for (q, scores) in q.iter().zip(scores.chunks_exact_mut(padded)) {
        scores.fill(0.0);
        for (&qc, kc) in q.iter().zip(kt.chunks_exact(padded)) {
            for (s, &k) in scores.iter_mut().zip(kc) {
                *s += qc * k;
            }
        }
    }
}

/// [`query_scores`] with 4 × QB 16-lane accumulators per group of 64 keys: per q component,
/// four loads of kᵀ and one FMA per accumulator. (Written out: left to itself the compiler
/// vectorised the q loop, with gathers.)
///
/// # Safety
/// AVX-512 F must be available; the lengths as [`query_scores`] asserts them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn query_scores_avx512(q: &[&[f32]; QB], kt: &[f32], scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let padded = scores.len() / QB;
    let hd = q[0].len();
    for g in (0..padded).step_by(64) {
        let mut acc = [[_mm512_setzero_ps(); 4]; QB];
        for c in 0..hd {
            // SAFETY: c < hd and g + 64 <= padded, so the 64 values read lie inside kt.
            let k = unsafe { kt.as_ptr().add(c * padded + g) };
            // SAFETY: as above, i < 4.
            let kv: [__m512; 4] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(k.add(16 * i)) });
            for (acc, q) in acc.iter_mut().zip(q) {
                let qv = _mm512_set1_ps(q[c]);
                for (a, &kv) in acc.iter_mut().zip(&kv) {
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: r·padded + g + 16 i + 16 <= QB·padded = scores.len().
                unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(r * padded + g + 16 * i), *a) };
            }
        }
    }
}

/// `out[r] = Σⱼ p[r][j] · vⱼ` for the first `out.len()` (≤ QB) rows, `v` = `[p[r].len(), hd]`
/// with hd = each `out[r].len()`. Rows of `p` past `out.len()` are read, not used.
fn weighted_sum(p: &[&[f32]; QB], v: &[f32], out: &mut [&mut [f32]]) {
    let hd = out.first().map_or(0, |o| o.len());
    let seq = p[0].len();
    assert!(
        v.len() == seq * hd
            && p.iter().all(|r| r.len() == seq)
            && out.len() <= QB
            && out.iter().all(|o| o.len() == hd)
    );
    #[cfg(target_arch = "x86_64")]
    if elementwise::has_avx512() {
        // SAFETY: the CPU has AVX-512 F (checked); the lengths were asserted just above.
        unsafe { weighted_sum_avx512(p, v, out) };
        return;
    }
    weighted_sum_portable(p, v, out);
}

fn weighted_sum_portable(p: &[&[f32]; QB], v: &[f32], out: &mut [&mut [f32]]) {
    for (p, out) in p.iter().zip(out.iter_mut()) {
        let hd = out.len();
        out.fill(0.0);
        for (&pj, vj) in p.iter().zip(v.chunks_exact(hd)) {
            for (o, &x) in out.iter_mut().zip(vj) {
                *o += pj * x;
            }
        }
    }
}

/// [`weighted_sum`] in registers: 64 output columns × QB rows at a time, the last column group
/// masked.
///
/// # Safety
/// AVX-512 F must be available; the lengths as [`weighted_sum`] asserts them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum_avx512(p: &[&[f32]; QB], v: &[f32], out: &mut [&mut [f32]]) {
    use std::arch::x86_64::*;
    let Some(hd) = out.first().map(|o| o.len()) else {
        return;
    };
    for c0 in (0..hd).step_by(64) {
        // Lane masks of the (up to) four 16-column chunks from c0.
        let masks: [__mmask16; 4] = std::array::from_fn(|i| {
            let left = hd.saturating_sub(c0 + 16 * i).min(16);
            ((1u32 << left) - 1) as __mmask16
        });
        let mut acc = [[_mm512_setzero_ps(); 4]; QB];
        for j in 0..p[0].len() {
            let x: [__m512; 4] = std::array::from_fn(|i| {
                // SAFETY: the mask enables only columns c0 + 16 i + l < hd of row j < seq,
                // which lie inside v; masked-off lanes are not read.
                unsafe { _mm512_maskz_loadu_ps(masks[i], v.as_ptr().add(j * hd + c0 + 16 * i)) }
            });
            for (acc, p) in acc.iter_mut().zip(p) {
                let pv = _mm512_set1_ps(p[j]);
                for (a, &x) in acc.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(pv, x, *a);
                }
            }
        }
        for (acc, out) in acc.iter().zip(out.iter_mut()) {
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: as above: only columns < hd of this row are written.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(c0 + 16 * i), masks[i], *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The textbook definition in f64, one query at a time.
    fn reference(
        qkv: &[f32],
        sh: AttentionShape,
        pos: usize,
        bi: usize,
        mask: Option<&[f32]>,
    ) -> Vec<f64> {
        let (t, h, hd) = (sh.seq, sh.heads, sh.head_dim);
        let d = h * hd;
        let at = |row: usize, col: usize| qkv[(bi * t + row) * 3 * d + col] as f64;
        let mut out = vec![0.0; d];
        for head in 0..h {
            let mut s: Vec<f64> = (0..t)
                .map(|j| {
                    let dot: f64 = (0..hd)
                        .map(|c| at(pos, head * hd + c) * at(j, d + head * hd + c))
                        .sum();
                    dot / (hd as f64).sqrt() + mask.map_or(0.0, |m| m[pos * t + j] as f64)
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            s.iter_mut().for_each(|v| *v = (*v - max).exp());
            let sum: f64 = s.iter().sum();
            for c in 0..hd {
                out[head * hd + c] = (0..t)
                    .map(|j| s[j] / sum * at(j, 2 * d + head * hd + c))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_with_and_without_a_causal_mask() {
        let sh = AttentionShape {
            batch: 3,
            seq: 7,
            heads: 2,
            head_dim: 20,
        };
        let d = 40;
        let qkv = values(3 * 7 * 3 * d, 5);
        let causal: Vec<f32> = (0..49)
            .map(|i| {
                if i % 7 > i / 7 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        for mask in [None, Some(&causal[..])] {
            let mut all = vec![f32::NAN; 3 * 7 * d];
            attention(&qkv, sh, Queries::All, mask, &mut all).unwrap();
            for bi in 0..3 {
                for pos in 0..7 {
                    let want = reference(&qkv, sh, pos, bi, mask);
                    let got = &all[(bi * 7 + pos) * d..(bi * 7 + pos + 1) * d];
                    for (g, w) in got.iter().zip(&want) {
                        assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
                    }
                }
            }
            // One query per sequence: the same rows as the full computation.
            let rows = [6, 0, 3];
            let mut pooled = vec![f32::NAN; 3 * d];
            attention(&qkv, sh, Queries::Rows(&rows), mask, &mut pooled).unwrap();
            for (bi, &r) in rows.iter().enumerate() {
                assert_eq!(
                    &pooled[bi * d..(bi + 1) * d],
                    &all[(bi * 7 + r) * d..(bi * 7 + r + 1) * d]
                );
            }
        }
    }

    /// The AVX-512 loops against the portable ones (which the other tests exercise only on CPUs
    /// without AVX-512), including head sizes that are not a multiple of 16.
    #[test]
    fn avx512_loops_equal_the_portable_ones() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::elementwise::has_avx512() {
            for hd in [64, 72, 40, 16, 3] {
                let rows: Vec<Vec<f32>> = (0..QB).map(|r| values(hd, 31 + r as u64)).collect();
                let q: [&[f32]; QB] = std::array::from_fn(|r| &rows[r][..]);
                let kt = values(hd * 128, 32);
                let (mut a, mut b) = (vec![0.0; QB * 128], vec![0.0; QB * 128]);
                // SAFETY: AVX-512 F checked above; 128 is a multiple of 64, kt is hd x 128 and
                // the scores QB x 128.
                unsafe { query_scores_avx512(&q, &kt, &mut a) };
                query_scores_portable(&q, &kt, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() < 1e-5, "scores, hd {hd}: {x} vs {y}");
                }
                let probs: Vec<Vec<f32>> = (0..QB).map(|r| values(50, 40 + r as u64)).collect();
                let p: [&[f32]; QB] = std::array::from_fn(|r| &probs[r][..]);
                let v = values(50 * hd, 34);
                // Fewer output rows than QB, as the last block of a sequence has.
                for n in [QB, 1] {
                    let mut a = vec![vec![f32::NAN; hd]; n];
                    let mut b = vec![vec![f32::NAN; hd]; n];
                    let mut ao: Vec<&mut [f32]> = a.iter_mut().map(|r| &mut r[..]).collect();
                    let mut bo: Vec<&mut [f32]> = b.iter_mut().map(|r| &mut r[..]).collect();
                    // SAFETY: AVX-512 F checked above; v is 50 x hd, each output row hd.
                    unsafe { weighted_sum_avx512(&p, &v, &mut ao) };
                    weighted_sum_portable(&p, &v, &mut bo);
                    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                        assert!((x - y).abs() < 1e-5, "weighted sum, hd {hd}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let sh = AttentionShape {
            batch: 2,
            seq: 3,
            heads: 1,
            head_dim: 4,
        };
        let qkv = vec![0.0; 2 * 3 * 12];
        let mut out = vec![0.0; 2 * 4];
        assert!(attention(&qkv, sh, Queries::Rows(&[0, 3]), None, &mut out).is_err());
        assert!(attention(&qkv, sh, Queries::Rows(&[0]), None, &mut out).is_err());
        assert!(attention(&qkv, sh, Queries::All, None, &mut out).is_err());
        assert!(attention(&qkv[1..], sh, Queries::Rows(&[0, 1]), None, &mut out).is_err());
        assert!(attention(&qkv, sh, Queries::Rows(&[0, 1]), Some(&[0.0; 4]), &mut out).is_err());
        assert!(attention(&qkv, sh, Queries::Rows(&[0, 1]), None, &mut out).is_ok());
    }
}
