//! `rd predict`: score images and draw where the defects are.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use image::RgbImage;
use rayon::prelude::*;
use rd_anomaly_map::{
    contour_overlay_thick, heatmap_overlay, mask_image, write_npy, MapView, Normalization,
    PRED_CONTOUR_COLOUR,
};
use rd_dataset::image::{has_image_extension, load_rgb, LoadOptions, RgbImage32};
use rd_dataset::layout::list_images;
use rd_dataset::resize_bilinear_aa;
use rd_metrics::Normalizer;
use rd_model::{LoadedModel, ReverseDistillation};
use serde::Serialize;

use crate::device::DeviceArg;
use crate::progress::Reporter;

/// Arguments of `rd predict`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  rd predict --model bottle.safetensors photos/ --out results/
  rd predict --model bottle.safetensors 'line3/*.png' part_0042.jpg --out results/ --raw-maps

Writes results/results.jsonl (one line per image: path, raw score, normalised score, label,
output files, or the error) and, per image, <name>_heatmap.png (jet overlay), <name>_mask.png
(predicted defect mask) and <name>_contour.png (red outline) at the image's own size.
The exit code is 0 when every image was scored and 1 when any failed.")]
pub struct PredictArgs {
    /// The model file (`rd train` or `rd import`).
    #[arg(long)]
    model: PathBuf,

    /// Images, folders of images, or glob patterns (quote them so the shell leaves them alone).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,

    /// Output folder (created if needed).
    #[arg(long, short)]
    out: PathBuf,

    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch_size: u32,

    /// Also write each raw anomaly map at model resolution as maps/<name>.npy (float32, H×W).
    #[arg(long)]
    raw_maps: bool,

    /// Where the model runs: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,

    /// Also print each result line to stdout.
    #[arg(long)]
    json: bool,
}

/// One line of `results.jsonl`.
#[derive(Debug, Default, Serialize)]
struct ResultLine {
    path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalized_score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heatmap: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contour: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_map: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// An input that expanded to an image, or could not.
enum Input {
    Image { path: PathBuf, stem: String },
    Bad { path: PathBuf, error: String },
}

/// Runs `rd predict`; `Ok(false)` when some images failed.
pub fn run(args: PredictArgs, quiet: bool) -> Result<bool> {
    let device = args.device.open()?;
    let started = std::time::Instant::now();
    let LoadedModel { model, meta, .. } = ReverseDistillation::load(&args.model, &device)?;
    tracing::info!(
        model = %args.model.display(),
        backbone = %meta.backbone,
        size = ?meta.image_size,
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    if args.raw_maps {
        let maps = args.out.join("maps");
        std::fs::create_dir_all(&maps)
            .with_context(|| format!("cannot create output folder {}", maps.display()))?;
    }
    let results_path = args.out.join("results.jsonl");
    let mut results = BufWriter::new(
        File::create(&results_path)
            .with_context(|| format!("cannot write {}", results_path.display()))?,
    );

    let inputs = expand_inputs(&args.inputs);
    let images = inputs
        .iter()
        .filter(|i| matches!(i, Input::Image { .. }))
        .count();
    if images == 0 {
        for input in &inputs {
            if let Input::Bad { path, error } = input {
                eprintln!("error: {}: {error}", path.display());
            }
        }
        bail!("no images to score");
    }

    let post = meta.post.post_processor();
    let image_norm = post.image_normalizer();
    let pixel_norm = post.pixel_normalizer();
    if !quiet && image_norm.is_identity() {
        eprintln!(
            "warning: {} has no image threshold statistics; scores are reported raw, without \
             normalised score or label (fit them with `rd eval`)",
            args.model.display()
        );
    }
    let ctx = Scorer {
        out: &args.out,
        raw_maps: args.raw_maps,
        size: (meta.image_size[0], meta.image_size[1]),
        normalization: meta.normalization,
        load: LoadOptions {
            apply_orientation: meta.exif_orientation,
            ..LoadOptions::default()
        },
        image_norm,
        pixel_norm,
    };

    let mut bar = Reporter::new("scoring", "image", inputs.len() as u64, quiet);
    let mut failed = 0usize;
    for chunk in inputs.chunks(args.batch_size as usize) {
        let t = std::time::Instant::now();
        let lines = ctx.score_batch(&model, chunk);
        tracing::debug!(
            images = chunk.len(),
            seconds = t.elapsed().as_secs_f64(),
            "batch scored"
        );
        for line in lines {
            if line.error.is_some() {
                failed += 1;
                if !quiet {
                    bar.suspend(|| {
                        eprintln!(
                            "error: {}: {}",
                            line.path.display(),
                            line.error.as_deref().unwrap_or("")
                        )
                    });
                }
            }
            let json = serde_json::to_string(&line)?;
            writeln!(results, "{json}")
                .with_context(|| format!("cannot write {}", results_path.display()))?;
            if args.json {
                println!("{json}");
            }
            bar.inc(1);
        }
        results.flush()?;
    }
    bar.finish();
    if !quiet {
        eprintln!(
            "scored {} of {} images -> {}",
            inputs.len() - failed,
            inputs.len(),
            results_path.display()
        );
    }
    Ok(failed == 0)
}

/// Everything needed to turn a batch of paths into result lines.
struct Scorer<'a> {
    out: &'a Path,
    raw_maps: bool,
    size: (usize, usize),
    normalization: rd_dataset::Normalization,
    load: LoadOptions,
    image_norm: Normalizer,
    pixel_norm: Normalizer,
}

impl Scorer<'_> {
    /// Scores one batch; every input gets exactly one line, in order.
    fn score_batch(&self, model: &ReverseDistillation, chunk: &[Input]) -> Vec<ResultLine> {
        let loaded: Vec<std::result::Result<(RgbImage32, Vec<f32>), String>> = chunk
            .par_iter()
            .map(|input| match input {
                Input::Image { path, .. } => self.prepare(path),
                Input::Bad { error, .. } => Err(error.clone()),
            })
            .collect();
        let good: Vec<&Vec<f32>> = loaded
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|(_, x)| x)
            .collect();
        let outputs = if good.is_empty() {
            Ok((Vec::new(), Vec::new()))
        } else {
            self.run_model(model, &good)
        };
        let (scores, maps) = match outputs {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("the model failed on this batch: {e:#}");
                return chunk.iter().map(|i| bad_line(i, msg.clone())).collect();
            }
        };
        let (h, w) = self.size;
        // Position of each successfully loaded image among the model's outputs.
        let mut next = 0;
        let slots: Vec<Option<usize>> = loaded
            .iter()
            .map(|r| {
                r.is_ok().then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        chunk
            .par_iter()
            .zip(loaded)
            .zip(slots)
            .map(|((input, prepared), slot)| match (input, prepared, slot) {
                (Input::Image { path, stem }, Ok((original, _)), Some(k)) => {
                    let map = &maps[k * h * w..(k + 1) * h * w];
                    self.write_outputs(path, stem, &original, scores[k], map)
                        .unwrap_or_else(|e| bad_line(input, format!("{e:#}")))
                }
                (_, Err(e), _) => bad_line(input, e),
                _ => bad_line(input, "internal error: no model output".into()),
            })
            .collect()
    }

    /// Loads an image, keeping the original and making the normalised model input.
    fn prepare(&self, path: &Path) -> std::result::Result<(RgbImage32, Vec<f32>), String> {
        let original = load_rgb(path, &self.load).map_err(|e| e.to_string())?;
        let (h, w) = self.size;
        let mut input = if (original.height, original.width) == (h, w) {
            original.clone()
        } else {
            resize_bilinear_aa(&original, h, w)
        };
        self.normalization.apply(&mut input);
        Ok((original, input.data))
    }

    /// Raw scores and flattened raw maps of a batch of model inputs.
    fn run_model(
        &self,
        model: &ReverseDistillation,
        inputs: &[&Vec<f32>],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (h, w) = self.size;
        let device = model.teacher_params().device().clone();
        let data: Vec<f32> = inputs.iter().flat_map(|v| v.iter().copied()).collect();
        let x = Tensor::from_vec(data, (inputs.len(), 3, h, w), &device)?;
        let maps = model.anomaly_maps(&x)?;
        Ok((
            maps.scores.to_vec1::<f32>()?,
            maps.map.flatten_all()?.to_vec1::<f32>()?,
        ))
    }

    /// Writes the overlays (and the raw map) of one image and makes its result line.
    fn write_outputs(
        &self,
        path: &Path,
        stem: &str,
        original: &RgbImage32,
        score: f32,
        map: &[f32],
    ) -> Result<ResultLine> {
        let (h, w) = self.size;
        let mut line = ResultLine {
            path: path.to_path_buf(),
            score: Some(score),
            ..Default::default()
        };
        if !self.image_norm.is_identity() {
            line.normalized_score = Some(self.image_norm.normalize(score));
            line.label = Some(self.image_norm.is_anomalous(score));
        }
        let image = to_rgb8(original);
        let (iw, ih) = image.dimensions();
        let normalized;
        let (view, how) = if self.pixel_norm.is_identity() {
            (MapView::new(map, h, w)?, Normalization::MapMinMax)
        } else {
            normalized = self.pixel_norm.normalize_all(map);
            (MapView::new(&normalized, h, w)?, Normalization::Identity)
        };
        let save =
            |img: &dyn Fn(&Path) -> image::ImageResult<()>, suffix: &str| -> Result<PathBuf> {
                let p = self.out.join(format!("{stem}_{suffix}.png"));
                img(&p).with_context(|| format!("cannot write {}", p.display()))?;
                Ok(p)
            };
        let heat = heatmap_overlay(&image, view, &how);
        line.heatmap = Some(save(&|p| heat.save(p), "heatmap")?);
        if !self.pixel_norm.is_identity() {
            // Normalised pixels above 0.5 are anomalous (anomalib's rule).
            let mask = mask_image(view, 0.5, iw, ih);
            let thickness = (iw.min(ih) / 256).max(1);
            let contour = contour_overlay_thick(&image, &mask, PRED_CONTOUR_COLOUR, thickness)?;
            line.mask = Some(save(&|p| mask.save(p), "mask")?);
            line.contour = Some(save(&|p| contour.save(p), "contour")?);
        }
        if self.raw_maps {
            let p = self.out.join("maps").join(format!("{stem}.npy"));
            write_npy(&p, map, h, w).with_context(|| format!("cannot write {}", p.display()))?;
            line.raw_map = Some(p);
        }
        Ok(line)
    }
}

fn bad_line(input: &Input, error: String) -> ResultLine {
    let path = match input {
        Input::Image { path, .. } | Input::Bad { path, .. } => path.clone(),
    };
    ResultLine {
        path,
        error: Some(error),
        ..Default::default()
    }
}

/// RGB8 of a `[0, 1]` float image, for drawing.
fn to_rgb8(img: &RgbImage32) -> RgbImage {
    let plane = img.height * img.width;
    let px = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
    RgbImage::from_fn(img.width as u32, img.height as u32, |x, y| {
        let i = y as usize * img.width + x as usize;
        image::Rgb([
            px(img.data[i]),
            px(img.data[plane + i]),
            px(img.data[2 * plane + i]),
        ])
    })
}

/// Files, folders and glob patterns to a list of images (with unique output stems) and errors.
fn expand_inputs(inputs: &[String]) -> Vec<Input> {
    let mut paths: Vec<std::result::Result<PathBuf, (PathBuf, String)>> = Vec::new();
    for input in inputs {
        let p = PathBuf::from(input);
        if p.is_dir() {
            match list_images(&p) {
                Ok(list) if list.is_empty() => paths.push(Err((
                    p,
                    "the folder holds no images (png, jpg, bmp, tif)".into(),
                ))),
                Ok(list) => paths.extend(list.into_iter().map(Ok)),
                Err(e) => paths.push(Err((p, e.to_string()))),
            }
        } else if p.exists() {
            paths.push(Ok(p));
        } else if input.contains(['*', '?', '[']) {
            match glob::glob(input) {
                Ok(matches) => {
                    let mut found: Vec<PathBuf> = matches
                        .filter_map(|m| m.ok())
                        .filter(|m| m.is_file() && has_image_extension(m))
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        paths.push(Err((p, "the pattern matched no images".into())));
                    }
                    paths.extend(found.into_iter().map(Ok));
                }
                Err(e) => paths.push(Err((p, format!("invalid pattern: {e}")))),
            }
        } else {
            paths.push(Err((p, "no such file or folder".into())));
        }
    }
    let mut used = HashSet::new();
    paths
        .into_iter()
        .map(|r| match r {
            Ok(path) => {
                let name =
                    |p: Option<&std::ffi::OsStr>| p.map(|s| s.to_string_lossy().into_owned());
                let base = name(path.file_stem()).unwrap_or_else(|| "image".into());
                // Same names in different folders (MVTec's test/<defect>/000.png) get the folder.
                let parent = name(path.parent().and_then(Path::file_name));
                let mut candidates = std::iter::once(base.clone())
                    .chain(parent.map(|p| format!("{p}_{base}")))
                    .chain((2..).map(|k| format!("{base}-{k}")));
                let stem = candidates.find(|c| used.insert(c.clone())).unwrap_or(base);
                Input::Image { path, stem }
            }
            Err((path, error)) => Input::Bad { path, error },
        })
        .collect()
}
