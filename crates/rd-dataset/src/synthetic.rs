//! A deterministic synthetic dataset in the MVTec AD layout, for demos and tests without
//! downloads.
//!
//! Two categories: `fabric`, a woven texture with soft shading noise, and `puck`, a metal disc
//! with a groove on a dark background whose position, size and colour jitter slightly. Test
//! images carry four kinds of clearly visible defects, each with an exact 0/255 mask:
//! `scratch` (thin line), `hole` (dark disc), `stain` (red blob) and `cut` (a missing piece).
//!
//! Everything is drawn from a seed with [`SplitMix64`] and only `+ - * /` and `sqrt`, which
//! IEEE 754 rounds exactly, so the PNG bytes are identical across runs and platforms.
//!
//! Files are written atomically (temporary file, then rename). A manifest,
//! `rd-synthetic.json`, records the configuration and is marked complete only after every file
//! is written: a second run with the same configuration returns at once, and an interrupted
//! run is redone rather than mistaken for a finished dataset.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::rng::SplitMix64;

/// Name of the manifest written at the dataset root.
pub const MANIFEST: &str = "rd-synthetic.json";

const FORMAT_VERSION: u32 = 1;

/// A synthetic category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticCategory {
    /// A woven texture (MVTec "texture" kind).
    Fabric,
    /// A metal disc on a background (MVTec "object" kind).
    Puck,
}

impl SyntheticCategory {
    /// Folder name of the category.
    pub fn name(self) -> &'static str {
        match self {
            SyntheticCategory::Fabric => "fabric",
            SyntheticCategory::Puck => "puck",
        }
    }
}

/// A synthetic defect type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// A thin straight line.
    Scratch,
    /// A dark disc.
    Hole,
    /// A red blob.
    Stain,
    /// A missing piece (background or flat underlay shows through).
    Cut,
}

impl DefectKind {
    /// Folder name of the defect type.
    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Scratch => "scratch",
            DefectKind::Hole => "hole",
            DefectKind::Stain => "stain",
            DefectKind::Cut => "cut",
        }
    }

    /// All defect types.
    pub const ALL: [DefectKind; 4] = [
        DefectKind::Scratch,
        DefectKind::Hole,
        DefectKind::Stain,
        DefectKind::Cut,
    ];
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    /// Seed of everything drawn.
    pub seed: u64,
    /// Side of the square images in pixels (at least 32).
    pub size: u32,
    /// Good training images per category.
    pub train_good: usize,
    /// Good test images per category.
    pub test_good: usize,
    /// Defective test images per category, spread over `defects` in turn.
    pub test_defective: usize,
    /// Categories to generate.
    pub categories: Vec<SyntheticCategory>,
    /// Defect types to use.
    pub defects: Vec<DefectKind>,
}

impl Default for SyntheticConfig {
    /// Sized for a CPU demo: 128 px, 60 train, 10 good and 15 defective test images per
    /// category, both categories, all defect types, seed 0.
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            size: 128,
            train_good: 60,
            test_good: 10,
            test_defective: 15,
            categories: vec![SyntheticCategory::Fabric, SyntheticCategory::Puck],
            defects: DefectKind::ALL.to_vec(),
        }
    }
}

impl SyntheticConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| {
            Err(DatasetError::InvalidConfig(format!(
                "synthetic dataset: {m}"
            )))
        };
        if self.size < 32 || self.size > 4096 {
            return bad("size must be between 32 and 4096 pixels");
        }
        if self.train_good == 0 {
            return bad("train_good must be at least 1");
        }
        if self.test_good + self.test_defective == 0 {
            return bad("there must be at least one test image");
        }
        if self.categories.is_empty() {
            return bad("no categories selected");
        }
        if self.test_defective > 0 && self.defects.is_empty() {
            return bad("defective images requested but no defect types selected");
        }
        if self.train_good.max(self.test_good).max(self.test_defective) > 100_000 {
            return bad("at most 100000 images per folder");
        }
        Ok(())
    }
}

/// What [`generate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSummary {
    /// The dataset root (pass it to [`crate::layout::mvtec::load`]).
    pub root: PathBuf,
    /// Category folder names.
    pub categories: Vec<String>,
    /// Number of files written (0 when an existing complete dataset was reused).
    pub files_written: usize,
    /// Whether an existing complete dataset with the same configuration was reused.
    pub reused: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    complete: bool,
    config: SyntheticConfig,
    files: Vec<String>,
}

/// The kind of image a job draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Train,
    TestGood,
    Defect(DefectKind),
}

#[derive(Debug, Clone)]
struct Job {
    category: SyntheticCategory,
    kind: Kind,
    /// Index within the folder (file name).
    index: usize,
    image: String,
    mask: Option<String>,
}

fn plan(config: &SyntheticConfig) -> Vec<Job> {
    let mut jobs = Vec::new();
    for &category in &config.categories {
        let c = category.name();
        for index in 0..config.train_good {
            jobs.push(Job {
                category,
                kind: Kind::Train,
                index,
                image: format!("{c}/train/good/{index:03}.png"),
                mask: None,
            });
        }
        for index in 0..config.test_good {
            jobs.push(Job {
                category,
                kind: Kind::TestGood,
                index,
                image: format!("{c}/test/good/{index:03}.png"),
                mask: None,
            });
        }
        let mut per_kind = vec![0usize; config.defects.len()];
        for i in 0..config.test_defective {
            let k = i % config.defects.len();
            let defect = config.defects[k];
            let index = per_kind[k];
            per_kind[k] += 1;
            let d = defect.name();
            jobs.push(Job {
                category,
                kind: Kind::Defect(defect),
                index,
                image: format!("{c}/test/{d}/{index:03}.png"),
                mask: Some(format!("{c}/ground_truth/{d}/{index:03}_mask.png")),
            });
        }
    }
    jobs
}

/// Writes the dataset under `root` (created if needed), or reuses a complete one made with the
/// same configuration.
pub fn generate(root: &Path, config: &SyntheticConfig) -> Result<SyntheticSummary> {
    config.validate()?;
    let jobs = plan(config);
    let files: Vec<String> = jobs
        .iter()
        .flat_map(|j| std::iter::once(j.image.clone()).chain(j.mask.clone()))
        .collect();
    let categories: Vec<String> = config
        .categories
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let manifest_path = root.join(MANIFEST);
    let old = read_manifest(&manifest_path);
    if let Some(m) = &old {
        if m.complete
            && m.format == FORMAT_VERSION
            && &m.config == config
            && files.iter().all(|f| root.join(f).is_file())
        {
            return Ok(SyntheticSummary {
                root: root.to_path_buf(),
                categories,
                files_written: 0,
                reused: true,
            });
        }
    }
    std::fs::create_dir_all(root).map_err(|e| DatasetError::io(root, e))?;
    // Remove what an earlier configuration wrote and this one will not overwrite.
    if let Some(m) = &old {
        let keep: std::collections::HashSet<&String> = files.iter().collect();
        for f in m
            .files
            .iter()
            .filter(|f| !keep.contains(f) && is_safe_relative(f))
        {
            let path = root.join(f);
            let _ = std::fs::remove_file(&path);
            // Remove folders left empty (remove_dir refuses non-empty ones).
            for dir in path.ancestors().skip(1) {
                if dir == root || std::fs::remove_dir(dir).is_err() {
                    break;
                }
            }
        }
    }
    let mut manifest = Manifest {
        format: FORMAT_VERSION,
        complete: false,
        config: config.clone(),
        files,
    };
    write_manifest(&manifest_path, &manifest)?;
    let size = config.size as usize;
    jobs.par_iter().try_for_each(|job| {
        let mut rng = SplitMix64::derive(
            config.seed,
            &[
                job.category as u64,
                match job.kind {
                    Kind::Train => 0,
                    Kind::TestGood => 1,
                    Kind::Defect(d) => 2 + d as u64,
                },
                job.index as u64,
            ],
        );
        let (rgb, mask) = render(job.category, job.kind, size, &mut rng);
        write_png(&root.join(&job.image), &rgb, size, ExtendedColorType::Rgb8)?;
        if let (Some(path), Some(mask)) = (&job.mask, mask) {
            write_png(&root.join(path), &mask, size, ExtendedColorType::L8)?;
        }
        Ok::<(), DatasetError>(())
    })?;
    manifest.complete = true;
    write_manifest(&manifest_path, &manifest)?;
    Ok(SyntheticSummary {
        root: root.to_path_buf(),
        categories,
        files_written: manifest.files.len(),
        reused: false,
    })
}

/// Draws one image in memory: RGB8 interleaved bytes and, for a defect, its 0/255 mask.
/// `variant` selects the stream of random draws (different variants give different images).
pub fn render_sample(
    category: SyntheticCategory,
    defect: Option<DefectKind>,
    size: u32,
    seed: u64,
    variant: u64,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut rng = SplitMix64::derive(seed, &[category as u64, 100, variant]);
    let kind = defect.map_or(Kind::Train, Kind::Defect);
    render(category, kind, size.max(32) as usize, &mut rng)
}

fn is_safe_relative(f: &str) -> bool {
    let p = Path::new(f);
    !p.is_absolute() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn read_manifest(path: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| DatasetError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

fn write_png(path: &Path, data: &[u8], size: usize, color: ExtendedColorType) -> Result<()> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(data, size as u32, size as u32, color)
        .map_err(|e| DatasetError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DatasetError::io(dir, e))?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DatasetError::io(path, e));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Drawing. Colours are f32 RGB in [0, 1]; only + - * / and sqrt are used.

type Rgb = [f32; 3];

struct Canvas {
    size: usize,
    px: Vec<Rgb>,
    /// How much of each pixel the object covers (1 everywhere for a texture).
    coverage: Vec<f32>,
    /// Colour behind the object (used by cut-outs on objects).
    background: Vec<Rgb>,
    /// Centre and radius of the object, for placing defects on it.
    object: Option<(f32, f32, f32)>,
}

fn render(
    category: SyntheticCategory,
    kind: Kind,
    size: usize,
    rng: &mut SplitMix64,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut canvas = match category {
        SyntheticCategory::Fabric => draw_fabric(size, rng),
        SyntheticCategory::Puck => draw_puck(size, rng),
    };
    let mask = match kind {
        Kind::Defect(defect) => Some(draw_defect(&mut canvas, category, defect, rng)),
        _ => None,
    };
    let rgb = canvas
        .px
        .iter()
        .flat_map(|p| p.iter().map(|&v| quantize(v)))
        .collect();
    (rgb, mask)
}

fn quantize(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// Hash of a lattice point to `[0, 1)`.
fn lattice(seed: u64, x: i64, y: i64) -> f32 {
    let mut r = SplitMix64::new(
        seed ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_f32()
}

/// Smooth value noise in `[0, 1)` with lattice spacing `cell` pixels.
fn value_noise(seed: u64, x: f32, y: f32, cell: f32) -> f32 {
    let (gx, gy) = (x / cell, y / cell);
    let (ix, iy) = (gx.floor(), gy.floor());
    let (fx, fy) = (gx - ix, gy - iy);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (ix, iy) = (ix as i64, iy as i64);
    let a = lattice(seed, ix, iy);
    let b = lattice(seed, ix + 1, iy);
    let c = lattice(seed, ix, iy + 1);
    let d = lattice(seed, ix + 1, iy + 1);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Triangle wave in `[0, 1]`: 0 at the thread edges, 1 at its middle.
fn thread_profile(t: f32) -> f32 {
    let f = t - t.floor();
    1.0 - (2.0 * f - 1.0).abs()
}

fn draw_fabric(size: usize, rng: &mut SplitMix64) -> Canvas {
    // Slight jitter: a common brightness factor and a small per-channel tint.
    let bright = rng.range_f32(0.95, 1.05);
    let base: Rgb = [
        0.55 * bright + rng.range_f32(-0.01, 0.01),
        0.49 * bright + rng.range_f32(-0.01, 0.01),
        0.39 * bright + rng.range_f32(-0.01, 0.01),
    ];
    let period = (size / 16).max(4) as f32;
    let (ox, oy) = (rng.range_f32(0.0, period), rng.range_f32(0.0, period));
    let noise_seed = rng.next_u64();
    let grain_seed = rng.next_u64();
    let mut px = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 + ox, y as f32 + oy);
            let (cx, cy) = ((fx / period).floor() as i64, (fy / period).floor() as i64);
            // Over/under weave: in alternate cells the horizontal or the vertical thread is on top.
            let weave = if (cx + cy) % 2 == 0 {
                thread_profile(fy / period)
            } else {
                thread_profile(fx / period)
            };
            let shade = 0.78
                + 0.3 * weave
                + 0.12 * (value_noise(noise_seed, fx, fy, period * 3.0) - 0.5)
                + 0.04 * (lattice(grain_seed, x as i64, y as i64) - 0.5);
            px.push([base[0] * shade, base[1] * shade, base[2] * shade]);
        }
    }
    Canvas {
        size,
        background: px.clone(),
        coverage: vec![1.0; size * size],
        px,
        object: None,
    }
}

fn draw_puck(size: usize, rng: &mut SplitMix64) -> Canvas {
    let s = size as f32;
    let cx = s * 0.5 + rng.range_f32(-0.04, 0.04) * s;
    let cy = s * 0.5 + rng.range_f32(-0.04, 0.04) * s;
    let radius = s * 0.32 * rng.range_f32(0.96, 1.04);
    let bright = rng.range_f32(0.97, 1.03);
    let metal: Rgb = [0.72 * bright, 0.70 * bright, 0.64 * bright];
    let bg_seed = rng.next_u64();
    let mut px = Vec::with_capacity(size * size);
    let mut background = Vec::with_capacity(size * size);
    let mut coverage = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let g = 0.9 + 0.2 * fy / s + 0.03 * (lattice(bg_seed, x as i64, y as i64) - 0.5);
            let bg: Rgb = [0.17 * g, 0.19 * g, 0.23 * g];
            let (dx, dy) = (fx - cx, fy - cy);
            let d = (dx * dx + dy * dy).sqrt();
            let cov = (radius - d + 0.5).clamp(0.0, 1.0);
            let r = d / radius;
            let groove = if (0.45..0.55).contains(&r) { 0.8 } else { 1.0 };
            // Light from the top left.
            let light = 1.0 - 0.15 * r * r + 0.08 * (-dx - dy) / (radius * 1.414);
            let shade = light * groove;
            let obj: Rgb = [metal[0] * shade, metal[1] * shade, metal[2] * shade];
            px.push([
                bg[0] + (obj[0] - bg[0]) * cov,
                bg[1] + (obj[1] - bg[1]) * cov,
                bg[2] + (obj[2] - bg[2]) * cov,
            ]);
            background.push(bg);
            coverage.push(cov);
        }
    }
    Canvas {
        size,
        px,
        coverage,
        background,
        object: Some((cx, cy, radius)),
    }
}

/// A random point: anywhere (away from the border) on a texture, well inside the object.
fn defect_centre(canvas: &Canvas, rng: &mut SplitMix64, inner: f32) -> (f32, f32) {
    let s = canvas.size as f32;
    match canvas.object {
        None => (
            rng.range_f32(0.2 * s, 0.8 * s),
            rng.range_f32(0.2 * s, 0.8 * s),
        ),
        Some((cx, cy, r)) => loop {
            let (dx, dy) = (rng.range_f32(-1.0, 1.0), rng.range_f32(-1.0, 1.0));
            if dx * dx + dy * dy <= 1.0 {
                return (cx + dx * r * inner, cy + dy * r * inner);
            }
        },
    }
}

/// Distance from `(px, py)` to the segment `a`-`b`.
fn segment_distance(px: f32, py: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let (wx, wy) = (px - a.0, py - a.1);
    let len2 = vx * vx + vy * vy;
    let t = if len2 > 0.0 {
        ((wx * vx + wy * vy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (wx - t * vx, wy - t * vy);
    (dx * dx + dy * dy).sqrt()
}

fn draw_defect(
    canvas: &mut Canvas,
    category: SyntheticCategory,
    defect: DefectKind,
    rng: &mut SplitMix64,
) -> Vec<u8> {
    let s = canvas.size as f32;
    let on_object = canvas.object.is_some();
    // Region test and the colour a pixel takes inside it.
    let region: Box<dyn Fn(f32, f32) -> bool> = match defect {
        DefectKind::Scratch => {
            let (cx, cy) = defect_centre(canvas, rng, 0.35);
            let (ux, uy) = loop {
                let (x, y) = (rng.range_f32(-1.0, 1.0), rng.range_f32(-1.0, 1.0));
                let n = (x * x + y * y).sqrt();
                if n > 0.2 && n <= 1.0 {
                    break (x / n, y / n);
                }
            };
            let extent = match canvas.object {
                Some((_, _, r)) => r * rng.range_f32(0.45, 0.6),
                None => s * rng.range_f32(0.15, 0.25),
            };
            let a = (cx - ux * extent, cy - uy * extent);
            let b = (cx + ux * extent, cy + uy * extent);
            let half_width = rng.range_f32(0.9, 1.6) * (s / 128.0).max(1.0);
            Box::new(move |x, y| segment_distance(x, y, a, b) <= half_width)
        }
        DefectKind::Hole => {
            let (cx, cy) = defect_centre(canvas, rng, 0.55);
            let r = s * rng.range_f32(0.04, 0.07);
            Box::new(move |x, y| (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r)
        }
        DefectKind::Stain => {
            let (cx, cy) = defect_centre(canvas, rng, 0.45);
            let blobs: Vec<(f32, f32, f32)> = (0..3)
                .map(|_| {
                    (
                        cx + s * rng.range_f32(-0.04, 0.04),
                        cy + s * rng.range_f32(-0.04, 0.04),
                        s * rng.range_f32(0.035, 0.065),
                    )
                })
                .collect();
            Box::new(move |x, y| {
                blobs
                    .iter()
                    .any(|&(bx, by, r)| (x - bx) * (x - bx) + (y - by) * (y - by) <= r * r)
            })
        }
        DefectKind::Cut => match canvas.object {
            // A bite out of the rim.
            Some((cx, cy, r)) => {
                let (ux, uy) = loop {
                    let (x, y) = (rng.range_f32(-1.0, 1.0), rng.range_f32(-1.0, 1.0));
                    let n = (x * x + y * y).sqrt();
                    if n > 0.2 && n <= 1.0 {
                        break (x / n, y / n);
                    }
                };
                let (bx, by) = (cx + ux * r, cy + uy * r);
                let br = s * rng.range_f32(0.10, 0.15);
                Box::new(move |x, y| (x - bx) * (x - bx) + (y - by) * (y - by) <= br * br)
            }
            // A rectangular piece missing from the cloth.
            None => {
                let (cx, cy) = defect_centre(canvas, rng, 1.0);
                let (hw, hh) = (s * rng.range_f32(0.05, 0.1), s * rng.range_f32(0.05, 0.1));
                Box::new(move |x, y| (x - cx).abs() <= hw && (y - cy).abs() <= hh)
            }
        },
    };
    let tint: Rgb = match (defect, category) {
        (DefectKind::Scratch, SyntheticCategory::Fabric) => [0.95, 0.94, 0.90],
        (DefectKind::Scratch, SyntheticCategory::Puck) => [0.12, 0.11, 0.10],
        (DefectKind::Hole, _) => [0.03, 0.03, 0.035],
        (DefectKind::Stain, _) => [0.72, 0.10, 0.08],
        (DefectKind::Cut, _) => [0.90, 0.90, 0.92],
    };
    let grain_seed = rng.next_u64();
    let mut mask = vec![0u8; canvas.size * canvas.size];
    for y in 0..canvas.size {
        for x in 0..canvas.size {
            let i = y * canvas.size + x;
            if !region(x as f32 + 0.5, y as f32 + 0.5) {
                continue;
            }
            let cov = canvas.coverage[i];
            if on_object {
                // Cut-outs remove whatever object there is; other defects sit fully on it.
                if (defect == DefectKind::Cut && cov <= 0.0)
                    || (defect != DefectKind::Cut && cov < 1.0)
                {
                    continue;
                }
            }
            let grain = 1.0 + 0.06 * (lattice(grain_seed, x as i64, y as i64) - 0.5);
            let new: Rgb = match (defect, on_object) {
                (DefectKind::Cut, true) => canvas.background[i],
                (DefectKind::Stain, _) => {
                    let p = canvas.px[i];
                    [
                        p[0] * 0.15 + tint[0] * 0.85 * grain,
                        p[1] * 0.15 + tint[1] * 0.85 * grain,
                        p[2] * 0.15 + tint[2] * 0.85 * grain,
                    ]
                }
                _ => [tint[0] * grain, tint[1] * grain, tint[2] * grain],
            };
            canvas.px[i] = new;
            mask[i] = 255;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defect_has_a_visible_nonempty_mask() {
        for category in [SyntheticCategory::Fabric, SyntheticCategory::Puck] {
            let (good, none) = render_sample(category, None, 64, 5, 0);
            assert!(none.is_none());
            for (v, defect) in DefectKind::ALL.into_iter().enumerate() {
                let (rgb, mask) = render_sample(category, Some(defect), 64, 5, v as u64);
                let mask = mask.unwrap();
                let n = mask.iter().filter(|&&m| m == 255).count();
                assert!(n >= 10, "{category:?} {defect:?}: {n} mask pixels");
                assert!(mask.iter().all(|&m| m == 0 || m == 255));
                // Mean absolute colour change inside the mask versus a good image of the
                // same stream is large, i.e. the defect is visible.
                let (base, _) = render_sample(category, None, 64, 5, v as u64);
                let diff: f32 = mask
                    .iter()
                    .enumerate()
                    .filter(|(_, &m)| m == 255)
                    .map(|(i, _)| {
                        (0..3)
                            .map(|c| (rgb[3 * i + c] as f32 - base[3 * i + c] as f32).abs())
                            .sum::<f32>()
                            / 3.0
                    })
                    .sum::<f32>()
                    / n as f32;
                assert!(diff > 40.0, "{category:?} {defect:?}: mean change {diff}");
                // Outside the mask nothing changed.
                for (i, &m) in mask.iter().enumerate() {
                    if m == 0 {
                        assert_eq!(&rgb[3 * i..3 * i + 3], &base[3 * i..3 * i + 3]);
                    }
                }
            }
            assert_eq!(good.len(), 64 * 64 * 3);
        }
    }
}
