//! Area under the per-region-overlap curve up to an FPR limit, as anomalib's `AUPRO` computes it.
//!
//! anomalib 2.x (`metrics/aupro.py`, `compute_pro`):
//! 1. label the 8-connected regions of every mask (OpenCV on CPU), unique across the set;
//! 2. every background pixel of every image (normal images included) weighs `1 / #background`
//!    in the FPR, every pixel of region `r` weighs `1 / (|r| · #regions)` in the PRO;
//! 3. sort all pixels by score descending, take cumulative sums (clamped at 1), keep only the
//!    last point of each run of tied scores and prepend (0, 0);
//! 4. take the last point with `fpr <= limit`; if its FPR is below the limit and a next point
//!    exists, append a point linearly interpolated at exactly `fpr = limit`, else truncate there;
//! 5. AUPRO = trapezoidal area ÷ the curve's last FPR (normally the limit).
//!
//! anomalib keeps the limit in an `f32` buffer, so the limit used here is `fpr_limit as f32`;
//! the points and the interpolation are formed in `f32` like torch, the area summed in `f64`.

use crate::error::{MetricsError, Result};
use crate::label::{check_labels, check_scores, is_positive, Label};
use crate::sweep::{for_each_in_range, payload, sweep_descending, BucketRange, PayloadSource};
use rayon::prelude::*;
use std::ops::ControlFlow;

/// Shape of a stack of maps or masks stored as one flat row-major slice: `n` images of `h × w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// Number of images.
    pub n: usize,
    /// Height of each image.
    pub h: usize,
    /// Width of each image.
    pub w: usize,
}

impl MapShape {
    /// A stack of `n` maps of `h × w` pixels.
    pub fn new(n: usize, h: usize, w: usize) -> Self {
        Self { n, h, w }
    }

    /// Total number of pixels `n·h·w`, or an error if it overflows or the per-image size does not
    /// fit the `u32` region sizes used internally.
    pub fn pixels(&self) -> Result<usize> {
        let overflow = || MetricsError::ShapeOverflow {
            n: self.n,
            h: self.h,
            w: self.w,
        };
        let hw = self.h.checked_mul(self.w).ok_or_else(overflow)?;
        if hw >= u32::MAX as usize {
            return Err(overflow());
        }
        hw.checked_mul(self.n).ok_or_else(overflow)
    }
}

/// The PRO curve up to the FPR limit and the normalised area under it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuproCurve {
    /// Global false-positive rate of each point, ascending, starting at 0 (the (0, 0) point).
    pub fpr: Vec<f32>,
    /// Mean per-region overlap (recall) of each point.
    pub pro: Vec<f32>,
    /// Area under the curve divided by its last FPR (in [0, 1]).
    pub aupro: f64,
}

/// AUPRO of anomaly `maps` against binary `masks` (both flat, `shape`) up to `fpr_limit`
/// (anomalib's default is 0.3).
///
/// Returns 0 when the masks hold no region or no background pixel (anomalib's curve is then
/// [(0, 0), (limit, 0)]).
///
/// Errors: empty shape, slice length ≠ `shape`, NaN score, mask value other than 0/1, limit not
/// a positive finite `f32`.
pub fn aupro<L: Label>(maps: &[f32], masks: &[L], shape: MapShape, fpr_limit: f64) -> Result<f64> {
    pro_curve(maps, masks, shape, fpr_limit, false).map(|c| c.aupro)
}

/// [`aupro`] together with the (FPR, PRO) points of the truncated curve.
///
/// The curve holds one point per unique score with FPR ≤ the limit, so it can be large for
/// full-resolution pixel sets; use [`aupro`] when only the value is needed.
pub fn aupro_curve<L: Label>(
    maps: &[f32],
    masks: &[L],
    shape: MapShape,
    fpr_limit: f64,
) -> Result<AuproCurve> {
    pro_curve(maps, masks, shape, fpr_limit, true)
}

fn pro_curve<L: Label>(
    maps: &[f32],
    masks: &[L],
    shape: MapShape,
    fpr_limit: f64,
    keep_points: bool,
) -> Result<AuproCurve> {
    let limit = fpr_limit as f32;
    if !(limit.is_finite() && limit > 0.0) {
        return Err(MetricsError::InvalidFprLimit(fpr_limit));
    }
    let pixels = shape.pixels()?;
    if pixels == 0 {
        return Err(MetricsError::Empty { what: "maps" });
    }
    for (what, actual) in [("maps", maps.len()), ("masks", masks.len())] {
        if actual != pixels {
            return Err(MetricsError::LengthMismatch {
                what,
                expected: pixels,
                actual,
            });
        }
    }
    check_scores("maps", maps)?;
    check_labels("masks", masks)?;

    let regions = Regions::label(masks, shape);
    if regions.count == 0 || regions.background == 0 {
        return Ok(AuproCurve {
            fpr: vec![0.0, limit],
            pro: vec![0.0, 0.0],
            aupro: 0.0,
        });
    }
    let background = regions.background as f32;
    let count = regions.count as f32;
    let source = RegionPayload {
        masks,
        hw: shape.h * shape.w,
        regions: &regions,
    };

    let mut curve = AuproCurve {
        fpr: vec![0.0],
        pro: vec![0.0],
        aupro: 0.0,
    };
    let (mut prev_fpr, mut prev_pro) = (0.0f32, 0.0f32);
    let mut twice_area = 0.0f64;
    let (mut false_pos, mut overlap) = (0u64, 0.0f64);
    sweep_descending(maps, &source, |_, run| {
        for &e in run {
            match payload(e) {
                0 => false_pos += 1,
                size => overlap += f64::from(1.0f32 / size as f32),
            }
        }
        let fpr = (false_pos as f32 / background).min(1.0);
        let pro = (overlap as f32 / count).min(1.0);
        let (x, y, stop) = if fpr <= limit {
            (fpr, pro, false)
        } else if prev_fpr < limit {
            let y = prev_pro + (pro - prev_pro) * (limit - prev_fpr) / (fpr - prev_fpr);
            (limit, y, true)
        } else {
            return ControlFlow::Break(());
        };
        twice_area += f64::from((prev_pro + y) * (x - prev_fpr));
        (prev_fpr, prev_pro) = (x, y);
        if keep_points {
            curve.fpr.push(x);
            curve.pro.push(y);
        }
        if stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    curve.aupro = twice_area / 2.0 / f64::from(prev_fpr);
    Ok(curve)
}

/// 8-connected regions of every mask: for each foreground pixel (raster order, image by image)
/// the size of its region, plus global counts.
struct Regions {
    /// Region size of every foreground pixel, all images concatenated.
    sizes: Vec<u32>,
    /// `sizes[offsets[i]..offsets[i + 1]]` belongs to image `i`.
    offsets: Vec<usize>,
    /// Number of regions over all images.
    count: u64,
    /// Number of background pixels over all images.
    background: u64,
}

impl Regions {
    fn label<L: Label>(masks: &[L], shape: MapShape) -> Self {
        let hw = shape.h * shape.w;
        let per_image: Vec<(Vec<u32>, u64)> = masks
            .par_chunks(hw)
            .map(|mask| region_sizes(mask, shape.h, shape.w))
            .collect();
        let mut offsets = Vec::with_capacity(per_image.len() + 1);
        offsets.push(0);
        let total: usize = per_image.iter().map(|(s, _)| s.len()).sum();
        let mut sizes = Vec::with_capacity(total);
        let mut count = 0;
        for (s, c) in per_image {
            sizes.extend_from_slice(&s);
            offsets.push(sizes.len());
            count += c;
        }
        Regions {
            background: (masks.len() - sizes.len()) as u64,
            sizes,
            offsets,
            count,
        }
    }
}

/// Payload of a pixel: 0 for background, else the size of its region. Segments are images.
struct RegionPayload<'a, L> {
    masks: &'a [L],
    hw: usize,
    regions: &'a Regions,
}

impl<L: Label> PayloadSource for RegionPayload<'_, L> {
    fn segment_len(&self) -> usize {
        self.hw
    }
    fn gather(
        &self,
        segment: usize,
        scores: &[f32],
        range: BucketRange,
        out: &mut Vec<u64>,
        scratch: &mut Vec<u32>,
    ) {
        let mut filled = false;
        for_each_in_range(scores, range, |i, k| {
            if !filled {
                // Payloads of the whole image: region sizes follow the foreground raster order.
                let start = segment * self.hw;
                let mask = &self.masks[start..start + scores.len()];
                let offsets = &self.regions.offsets;
                let mut sizes = self.regions.sizes[offsets[segment]..offsets[segment + 1]].iter();
                scratch.clear();
                scratch.extend(mask.iter().map(|&m| {
                    if is_positive(m) {
                        sizes.next().copied().unwrap_or(0)
                    } else {
                        0
                    }
                }));
                filled = true;
            }
            out.push((u64::from(k) << 32) | u64::from(scratch[i]));
        });
    }
}

fn find(parent: &mut [u32], mut a: u32) -> u32 {
    while parent[a as usize] != a {
        let grandparent = parent[parent[a as usize] as usize];
        parent[a as usize] = grandparent;
        a = grandparent;
    }
    a
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

/// Two-pass union-find labelling of one `h × w` mask with 8-connectivity (OpenCV's default).
///
/// Returns the region size of every foreground pixel in raster order, and the region count.
pub(crate) fn region_sizes<L: Label>(mask: &[L], h: usize, w: usize) -> (Vec<u32>, u64) {
    if !mask.iter().any(|&m| is_positive(m)) {
        return (Vec::new(), 0);
    }
    let mut labels = vec![0u32; h * w];
    let mut parent: Vec<u32> = vec![0];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if !is_positive(mask[i]) {
                continue;
            }
            // Already-visited neighbours: W, NW, N, NE.
            let mut neighbours = [0u32; 4];
            let mut k = 0;
            if x > 0 {
                neighbours[k] = labels[i - 1];
                k += 1;
            }
            if y > 0 {
                let up = i - w;
                if x > 0 {
                    neighbours[k] = labels[up - 1];
                    k += 1;
                }
                neighbours[k] = labels[up];
                k += 1;
                if x + 1 < w {
                    neighbours[k] = labels[up + 1];
                    k += 1;
                }
            }
            let mut label = 0;
            for &nl in &neighbours[..k] {
                if nl == 0 {
                    continue;
                }
                if label == 0 {
                    label = nl;
                } else {
                    union(&mut parent, label, nl);
                }
            }
            if label == 0 {
                label = parent.len() as u32;
                parent.push(label);
            }
            labels[i] = label;
        }
    }
    let mut size = vec![0u32; parent.len()];
    for l in labels.iter_mut().filter(|l| **l != 0) {
        *l = find(&mut parent, *l);
        size[*l as usize] += 1;
    }
    let count = (1..parent.len())
        .filter(|&k| parent[k] as usize == k)
        .count() as u64;
    let sizes = labels
        .iter()
        .filter(|&&l| l != 0)
        .map(|&l| size[l as usize])
        .collect();
    (sizes, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn diagonal_touch_is_one_region_under_8_connectivity() {
        let (sizes, n) = region_sizes(&[1u8, 0, 0, 0, 1, 0, 0, 0, 0], 3, 3);
        assert_eq!((sizes, n), (vec![2, 2], 1));
        // Anti-diagonal (north-east neighbour).
        let (sizes, n) = region_sizes(&[0u8, 1, 1, 0], 2, 2);
        assert_eq!((sizes, n), (vec![2, 2], 1));
        // Corners that do not touch: four regions.
        let (sizes, n) = region_sizes(&[1u8, 0, 1, 0, 0, 0, 1, 0, 1], 3, 3);
        assert_eq!((sizes, n), (vec![1, 1, 1, 1], 4));
        // A U shape whose arms get different provisional labels, merged on the last row.
        let (sizes, n) = region_sizes(&[1u8, 0, 1, 1, 1, 1], 2, 3);
        assert_eq!((sizes, n), (vec![5; 5], 1));
        // Two regions of different size.
        let (sizes, n) = region_sizes(&[1u8, 1, 0, 0, 0, 1], 1, 6);
        assert_eq!((sizes, n), (vec![2, 2, 1], 2));
        assert_eq!(region_sizes(&[0u8; 4], 2, 2), (vec![], 0));
    }

    /// One 2×5 image: region {(0,0), (0,1)} with scores 0.9 and 0.6, 8 background pixels of which
    /// one ties with the region at 0.6. Curve: (0,0) (0,.5) (.125,.5) (.25,.5) (.375,1) (.5,1) …
    fn one_region_case() -> (Vec<f32>, Vec<u8>, MapShape) {
        let maps = vec![0.9, 0.6, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05];
        let masks = vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        (maps, masks, MapShape::new(1, 2, 5))
    }

    #[test]
    fn interpolates_at_the_limit_and_divides_by_it() {
        let (maps, masks, shape) = one_region_case();
        let c = aupro_curve(&maps, &masks, shape, 0.3).unwrap();
        // (0.25, 0.5) -> (0.375, 1.0) cut at 0.3: pro = 0.5 + 0.5 * 0.05 / 0.125 = 0.7.
        let want_fpr = [0.0, 0.0, 0.125, 0.25, 0.3];
        let want_pro = [0.0, 0.5, 0.5, 0.5, 0.7];
        assert_eq!(c.fpr.len(), 5);
        for i in 0..5 {
            assert!((c.fpr[i] - want_fpr[i]).abs() < 1e-6, "{:?}", c.fpr);
            assert!((c.pro[i] - want_pro[i]).abs() < 1e-6, "{:?}", c.pro);
        }
        // area = 0.0625 + 0.0625 + 0.05 * (0.5 + 0.7) / 2 = 0.155; / 0.3
        assert!(close(c.aupro, 0.155 / 0.3), "{}", c.aupro);
        assert!(close(
            aupro(&maps, &masks, shape, 0.3).unwrap(),
            0.155 / 0.3
        ));
    }

    #[test]
    fn limit_on_a_point_truncates_without_interpolation() {
        let (maps, masks, shape) = one_region_case();
        let c = aupro_curve(&maps, &masks, shape, 0.25).unwrap();
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.125, 0.25]);
        assert!(close(c.aupro, 0.125 / 0.25));
    }

    #[test]
    fn limit_below_the_first_false_positive() {
        let (maps, masks, shape) = one_region_case();
        let c = aupro_curve(&maps, &masks, shape, 0.05).unwrap();
        assert_eq!(c.fpr.len(), 3);
        assert!(close(c.aupro, 0.5), "{}", c.aupro);
    }

    #[test]
    fn full_curve_and_a_limit_beyond_one_divide_by_the_last_fpr() {
        let (maps, masks, shape) = one_region_case();
        // 0.0625 + 0.0625 + 0.125 * 1.5 / 2 + 5 * 0.125 = 0.84375
        assert!(close(aupro(&maps, &masks, shape, 1.0).unwrap(), 0.84375));
        // The curve ends at fpr 1 < 2: area / fpr[-1] = area / 1, not area / 2.
        let c = aupro_curve(&maps, &masks, shape, 2.0).unwrap();
        assert_eq!(*c.fpr.last().unwrap(), 1.0);
        assert!(close(c.aupro, 0.84375));
    }

    #[test]
    fn regions_are_pooled_over_images_and_normal_images_add_background() {
        // Three 1×2 images; regions of size 1 in images 0 and 1, image 2 normal.
        let maps = [0.9, 0.1, 0.2, 0.3, 0.25, 0.05];
        let masks = [1u8, 0, 1, 0, 0, 0];
        let shape = MapShape::new(3, 1, 2);
        // 0.9 r0 -> (0,.5); 0.3 bg -> (.25,.5); 0.25 bg -> (.5,.5); 0.2 r1 -> (.5,1);
        // 0.1 -> (.75,1); 0.05 -> (1,1). Area = .125 + .125 + .25 + .25 = .75.
        assert!(close(aupro(&maps, &masks, shape, 1.0).unwrap(), 0.75));
        // Cut at .3 between (.25,.5) and (.5,.5): area .15 / .3.
        assert!(close(aupro(&maps, &masks, shape, 0.3).unwrap(), 0.5));
    }

    #[test]
    fn region_weights_are_per_region_not_per_pixel() {
        // Region A (3 px) fully detected first, region B (1 px) last: PRO jumps to 0.5 at once.
        let maps = [0.9, 0.9, 0.9, 0.1, 0.5, 0.2];
        let masks = [1u8, 1, 1, 0, 0, 1];
        let shape = MapShape::new(1, 1, 6); // regions {0,1,2} and {5}
        let c = aupro_curve(&maps, &masks, shape, 1.0).unwrap();
        assert_eq!(c.pro[1], 0.5);
        // (0,.5) -> (.5,.5) -> (.5,1) -> (1,1): .25 + .5
        assert!(close(c.aupro, 0.75));
    }

    #[test]
    fn degenerate_masks_give_zero() {
        let shape = MapShape::new(1, 1, 3);
        assert_eq!(aupro(&[0.1, 0.2, 0.3], &[0u8; 3], shape, 0.3).unwrap(), 0.0);
        assert_eq!(aupro(&[0.1, 0.2, 0.3], &[1u8; 3], shape, 0.3).unwrap(), 0.0);
    }

    #[test]
    fn matches_a_direct_evaluation_on_random_data() {
        // Brute force: for each unique threshold, count pixels >= t per region and background.
        let (n, h, w) = (4usize, 9usize, 11usize);
        let mut state = 3u64;
        let mut maps = Vec::new();
        let mut masks = Vec::new();
        for i in 0..n * h * w {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as u32;
            let (y, x) = ((i / w) % h, i % w);
            let m = u8::from((i / (h * w)).is_multiple_of(2) && (y / 3 + x / 4).is_multiple_of(3));
            maps.push((r % 30) as f32 * 0.1 + f32::from(m) * 1.2);
            masks.push(m);
        }
        let shape = MapShape::new(n, h, w);
        let mut regions: Vec<Vec<usize>> = Vec::new(); // pixel indices of each region
        for img in 0..n {
            let off = img * h * w;
            let mut seen = vec![false; h * w];
            for start in 0..h * w {
                if masks[off + start] == 0 || seen[start] {
                    continue;
                }
                let (mut stack, mut px) = (vec![start], Vec::new());
                seen[start] = true;
                while let Some(p) = stack.pop() {
                    px.push(off + p);
                    let (py, pxx) = ((p / w) as i64, (p % w) as i64);
                    for dy in -1..=1 {
                        for dx in -1..=1 {
                            let (ny, nx) = (py + dy, pxx + dx);
                            if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                                continue;
                            }
                            let q = ny as usize * w + nx as usize;
                            if masks[off + q] == 1 && !seen[q] {
                                seen[q] = true;
                                stack.push(q);
                            }
                        }
                    }
                }
                regions.push(px);
            }
        }
        let bg: Vec<usize> = (0..maps.len()).filter(|&i| masks[i] == 0).collect();
        let mut thresholds: Vec<f32> = maps.clone();
        thresholds.sort_by(|a, b| b.total_cmp(a));
        thresholds.dedup();
        let mut pts = vec![(0.0f64, 0.0f64)];
        for &t in &thresholds {
            let fpr = bg.iter().filter(|&&i| maps[i] >= t).count() as f64 / bg.len() as f64;
            let pro = regions
                .iter()
                .map(|r| r.iter().filter(|&&i| maps[i] >= t).count() as f64 / r.len() as f64)
                .sum::<f64>()
                / regions.len() as f64;
            pts.push((fpr, pro));
        }
        for limit in [0.05, 0.3, 1.0] {
            let i = pts.iter().rposition(|p| p.0 <= limit).unwrap();
            let mut cut: Vec<(f64, f64)> = pts[..=i].to_vec();
            if pts[i].0 < limit && i + 1 < pts.len() {
                let ((f1, p1), (f2, p2)) = (pts[i], pts[i + 1]);
                cut.push((limit, p1 + (p2 - p1) * (limit - f1) / (f2 - f1)));
            }
            let area: f64 = cut
                .windows(2)
                .map(|s| (s[1].0 - s[0].0) * (s[1].1 + s[0].1) / 2.0)
                .sum();
            let want = area / cut.last().unwrap().0;
            let got = aupro(&maps, &masks, shape, limit).unwrap();
            assert!((got - want).abs() < 1e-6, "limit {limit}: {got} vs {want}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (maps, masks, shape) = one_region_case();
        assert!(matches!(
            aupro(&maps, &masks[..9], shape, 0.3),
            Err(MetricsError::LengthMismatch {
                what: "masks",
                expected: 10,
                actual: 9
            })
        ));
        assert!(matches!(
            aupro(&maps, &masks, MapShape::new(1, 3, 5), 0.3),
            Err(MetricsError::LengthMismatch { what: "maps", .. })
        ));
        assert!(matches!(
            aupro::<u8>(&[], &[], MapShape::new(0, 2, 5), 0.3),
            Err(MetricsError::Empty { .. })
        ));
        for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                aupro(&maps, &masks, shape, bad),
                Err(MetricsError::InvalidFprLimit(_))
            ));
        }
        let mut m255 = masks.clone();
        m255[0] = 255;
        assert!(matches!(
            aupro(&maps, &m255, shape, 0.3),
            Err(MetricsError::InvalidLabel {
                what: "masks",
                index: 0,
                value: 255
            })
        ));
        assert!(matches!(
            MapShape::new(usize::MAX, 2, 2).pixels(),
            Err(MetricsError::ShapeOverflow { .. })
        ));
    }
}
