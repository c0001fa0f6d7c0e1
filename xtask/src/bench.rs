//! `cargo xtask bench`: speed and memory of inference, training and start-up, optionally side by
//! side with anomalib on PyTorch (`--torch-python`), interleaved in the same run.
//!
//! Every measurement runs in a fresh worker process (this binary with a hidden `--worker`, or the
//! Python helper `bench_torch.py`), so each row's peak RSS is that process's own. Rows are
//! measured in `--rounds` interleaved rounds (ours, anomalib, ours, anomalib, …); each worker does
//! `--warmup` untimed then `--runs` timed iterations; a row's time is the median over all of them.
//! On these noisy machines only ratios from one run mean anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher};
use rd_model::{
    AdamConfig, Backprop, DeviceSpec, ModelConfig, ModelMeta, ReverseDistillation, StepPhase,
    Student, Trainer, Variant,
};
use serde_json::{json, Value};

const TORCH_SCRIPT: &str = include_str!("bench_torch.py");

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A Python with anomalib installed: also run anomalib's model and print the ratios.
    #[arg(long, value_name = "PATH")]
    pub torch_python: Option<PathBuf>,
    /// Backbones to measure (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet18,wide_resnet50_2"
    )]
    pub backbones: Vec<String>,
    /// Row kinds to measure (comma-separated): inferN and trainN (N images a batch), startup
    /// [default: infer1,infer8,train8,startup on the CPU; infer1,infer32,train16 on a GPU].
    #[arg(long, value_delimiter = ',')]
    pub rows: Option<Vec<String>>,
    /// Where both sides run: cpu, cuda, cuda:N or metal (ours needs an xtask built with that
    /// feature, e.g. `--features cuda`; anomalib's side uses torch's device of that name).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// The `rd` binary for the start-up row [default: the one beside this xtask].
    #[arg(long, value_name = "PATH")]
    pub rd: Option<PathBuf>,
    /// Image size (square).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Threads for both sides (RAYON_NUM_THREADS / torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Untimed iterations per worker.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed iterations per worker.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Interleaved rounds per row (each round starts one worker per side).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/bench.json")]
    pub json: PathBuf,
    /// Run our side through the reference (pure Candle) path instead of the fast kernels.
    #[arg(long)]
    pub reference: bool,
    /// Train through Candle's autograd over the kernels instead of the explicit training
    /// engine (the engine's A/B baseline).
    #[arg(long)]
    pub graph: bool,
    /// Only time the GEMM on convolution-shaped products: GFLOP/s of the AVX-512 kernel and of
    /// the `gemm` crate (the machine's GEMM peak that the model rows are measured against).
    #[arg(long)]
    pub gemm: bool,
    /// Only time the phases of our training step (batch 8): teacher, student forward, loss,
    /// backward, Adam; with the GEMM work of each, against the GEMM peak.
    #[arg(long)]
    pub phases: bool,
    /// Only time whole training runs: `rd train` against anomalib's `Engine.fit` (with
    /// --torch-python) on --fit-images synthetic good images of --size, --fit-epochs epochs of
    /// batch 8, --rounds interleaved rounds per backbone.
    #[arg(long)]
    pub fit: bool,
    /// Good training images for --fit.
    #[arg(long, default_value_t = 412, value_name = "N")]
    pub fit_images: usize,
    /// Epochs for --fit.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub fit_epochs: usize,
    /// Internal: run one measurement in this process (`infer:BACKBONE:BATCH` or `train:…`).
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

impl BenchArgs {
    /// How our training rows compute their gradients.
    fn backprop(&self) -> Backprop {
        if self.graph {
            Backprop::Graph
        } else {
            Backprop::Engine
        }
    }
}

/// Runs the benchmark (re-running itself as a release build first when built for debugging).
pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(w) = &args.worker {
        return if args.reference {
            rd_kernels::with_reference(|| worker(w, &args))
        } else {
            worker(w, &args)
        };
    }
    let root = crate::workspace_root();
    if cfg!(debug_assertions) && args.device != DeviceSpec::Cpu {
        bail!(
            "--device {} needs release binaries built with its feature: for CUDA, \
             `cargo xtask cuda-toolkit --build`, `cargo build --release -p xtask --features cuda` \
             with the same environment, then target/cuda/release/xtask bench --device {} …",
            args.device,
            args.device
        );
    }
    if cfg!(debug_assertions) {
        eprintln!("building release binaries (rd, xtask)…");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--release", "-p", "rd-cli", "-p", "xtask"])
            .status()
            .context("running cargo build --release")?;
        if !status.success() {
            bail!("cargo build --release failed");
        }
        let exe = root.join("target/release/xtask");
        let status = Command::new(exe)
            .current_dir(&root)
            .args(std::env::args_os().skip(1))
            .status()
            .context("running the release xtask")?;
        if !status.success() {
            bail!("the release benchmark failed");
        }
        return Ok(());
    }
    if args.gemm {
        return gemm_table(args.threads);
    }
    if args.phases {
        return phase_table(&args);
    }
    orchestrate(&args, &root)
}

/// (m, n, k) of convolutions in the models: output channels, output pixels, c_in·k·k.
const GEMM_SHAPES: [(usize, usize, usize); 6] = [
    (512, 1024, 4608),
    (64, 4096, 576),
    (128, 1024, 1152),
    (256, 256, 2304),
    (2048, 256, 1024),
    (512, 64, 4608),
];

/// Prints GFLOP/s of the AVX-512 GEMM and the `gemm` crate on convolution shapes (best of
/// several repetitions each, on `threads` rayon threads).
fn gemm_table(threads: usize) -> Result<()> {
    println!("| m×k · k×n | AVX-512 kernel | gemm crate | ratio |\n|---|---:|---:|---:|");
    for (m, n, k) in GEMM_SHAPES {
        let (ours, theirs) = gemm_gflops(threads, (m, n, k))?;
        println!(
            "| {m}×{k} · {k}×{n} | {ours:.1} GFLOP/s | {theirs:.1} GFLOP/s | {:.2}× |",
            ours / theirs
        );
    }
    println!("({threads} threads)");
    Ok(())
}

/// The machine's GEMM peak as the model rows see it: the best GFLOP/s of the kernel the models
/// use (AVX-512 where available, else the `gemm` crate) over [`GEMM_SHAPES`].
fn gemm_peak(threads: usize) -> Result<f64> {
    let mut best = 0f64;
    for shape in GEMM_SHAPES {
        best = best.max(time_gemm(threads, shape, Kernel::Models)?);
    }
    Ok(best)
}

/// Which GEMM [`time_gemm`] times.
#[derive(Clone, Copy)]
enum Kernel {
    /// The AVX-512 kernel (NaN without AVX-512).
    Avx512,
    /// The `gemm` crate.
    GemmCrate,
    /// Whichever of the two the models run on this CPU.
    Models,
}

/// GFLOP/s of the AVX-512 kernel (NaN without AVX-512) and of the `gemm` crate on one shape.
fn gemm_gflops(threads: usize, shape: (usize, usize, usize)) -> Result<(f64, f64)> {
    Ok((
        time_gemm(threads, shape, Kernel::Avx512)?,
        time_gemm(threads, shape, Kernel::GemmCrate)?,
    ))
}

/// GFLOP/s of one GEMM kernel on one shape, best of several repetitions.
fn time_gemm(threads: usize, (m, n, k): (usize, usize, usize), kernel: Kernel) -> Result<f64> {
    use rd_kernels::gemm;
    let avx512 = match kernel {
        Kernel::Avx512 if !gemm::avx512_available() => return Ok(f64::NAN),
        Kernel::Avx512 => true,
        Kernel::GemmCrate => false,
        Kernel::Models => gemm::avx512_available(),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let values = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect()
    };
    let (a, b) = (values(m * k), values(k * n));
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((2e10 / flops) as usize).clamp(3, 200);
    let run = |c: &mut [f32]| {
        if avx512 {
            gemm::try_acc(c, &a, &b, m, n, k);
        } else {
            gemm::gemm_crate_acc(c, &a, &b, m, n, k);
        }
    };
    Ok(pool.install(|| {
        let mut c = vec![0f32; m * n];
        run(&mut c);
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            run(&mut c);
            best = best.min(t.elapsed().as_secs_f64());
        }
        flops / best / 1e9
    }))
}

/// Prints the median time and GEMM rate of each phase of our training step (batch 8), in this
/// process on `--threads` threads.
fn phase_table(args: &BenchArgs) -> Result<()> {
    if args.device != DeviceSpec::Cpu {
        bail!("--phases times CPU work (a GPU runs asynchronously); use the rows instead");
    }
    let phases: Vec<&str> = StepPhase::ALL
        .iter()
        .map(|p| p.name())
        .chain(["Adam"])
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let peak = gemm_peak(args.threads)?;
    rd_kernels::profile::enable();
    let mut kernels = Vec::new();
    println!(
        "Training step phases, batch 8, {}², {} threads; GEMM peak {peak:.0} GFLOP/s\n",
        args.size, args.threads
    );
    println!("| backbone | phase | median | GEMM GFLOP | GEMM GFLOP/s | share of peak |");
    println!("|---|---|---:|---:|---:|---:|");
    for backbone in &args.backbones {
        let backbone: Backbone = backbone.parse()?;
        eprintln!(
            "timing {backbone}: {} steps ({} untimed)…",
            args.warmup + args.runs,
            args.warmup
        );
        let (times, gflop) = pool.install(|| -> Result<_> {
            let model = seeded_model(backbone, args.size, &Device::Cpu)?;
            let x = input(8, args.size, &Device::Cpu)?;
            let mut trainer = Trainer::new(model, AdamConfig::anomalib());
            let mut times = vec![Vec::new(); phases.len()];
            let mut gflop = vec![0f64; phases.len()];
            for i in 0..args.warmup + args.runs {
                if i == args.warmup {
                    rd_kernels::profile::take();
                }
                let mut marks = vec![(Instant::now(), gemm_flops())];
                let mut mark = |_| marks.push((Instant::now(), gemm_flops()));
                let state = trainer.compute_marked(&x, args.backprop(), &mut mark)?;
                trainer.apply(&state)?;
                mark(StepPhase::Backward);
                drop(state);
                if i >= args.warmup {
                    for (p, w) in marks.windows(2).enumerate() {
                        times[p].push((w[1].0 - w[0].0).as_secs_f64());
                        gflop[p] += (w[1].1 - w[0].1) as f64 / 1e9 / args.runs as f64;
                    }
                }
            }
            Ok((times, gflop))
        })?;
        kernels.push((backbone, rd_kernels::profile::take()));
        let mut total = (0.0, 0.0);
        for (p, name) in phases.iter().enumerate() {
            let t = median(&times[p]);
            total = (total.0 + t, total.1 + gflop[p]);
            println!("{}", phase_line(backbone, name, t, gflop[p], peak));
        }
        println!(
            "{}",
            phase_line(backbone, "**step**", total.0, total.1, peak)
        );
    }
    println!("\nTime inside the training kernels, per step:\n");
    println!("| backbone | kernel | calls per step | per step |\n|---|---|---:|---:|");
    let runs = args.runs.max(1);
    for (backbone, rows) in kernels {
        for (name, calls, secs) in rows {
            println!(
                "| {backbone} | {name} | {} | {} |",
                calls / runs as u64,
                fmt_time(secs / runs as f64)
            );
        }
    }
    Ok(())
}

/// One line of [`phase_table`].
fn phase_line(backbone: Backbone, phase: &str, t: f64, gflop: f64, peak: f64) -> String {
    let rate = gflop / t;
    format!(
        "| {backbone} | {phase} | {} | {gflop:.2} | {rate:.0} | {:.0} % |",
        fmt_time(t),
        100.0 * rate / peak
    )
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// One side's result for a row: all timed iterations and the largest memory figures seen.
#[derive(Debug, Default, Clone)]
struct Side {
    times: Vec<f64>,
    rss_kb: u64,
    /// Peak GPU memory in use while the worker ran, above what was in use before (nvidia-smi).
    gpu_mib: Option<f64>,
    /// `torch.cuda.max_memory_allocated`: what PyTorch's allocator handed out at most.
    allocated_mib: Option<f64>,
    /// GEMM work per iteration (`rd_kernels::gemm::flops`), ours only.
    gflop: Option<f64>,
}

impl Side {
    fn add(&mut self, v: &Value, gpu_mib: Option<f64>) -> Result<()> {
        let times = v["times_s"]
            .as_array()
            .context("worker output without times_s")?;
        self.times.extend(times.iter().filter_map(Value::as_f64));
        self.rss_kb = self.rss_kb.max(v["peak_rss_kb"].as_u64().unwrap_or(0));
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.gpu_mib = max(self.gpu_mib, gpu_mib);
        self.allocated_mib = max(self.allocated_mib, v["max_allocated_mib"].as_f64());
        self.gflop = v["gflop"].as_f64().or(self.gflop);
        Ok(())
    }

    /// GEMM GFLOP/s at the median time.
    fn gflops(&self) -> Option<f64> {
        self.gflop.map(|g| g / median(&self.times))
    }
    fn json(&self, batch: Option<usize>) -> Value {
        let median = median(&self.times);
        json!({
            "median_s": median,
            "images_per_s": batch.map(|b| b as f64 / median),
            "times_s": self.times,
            "peak_rss_kb": self.rss_kb,
            "gpu_peak_mib": self.gpu_mib,
            "max_allocated_mib": self.allocated_mib,
            "gemm_gflop": self.gflop,
            "gemm_gflops_per_s": self.gflops(),
        })
    }
}

pub(crate) fn last_json_line(out: &[u8]) -> Result<Value> {
    let s = String::from_utf8_lossy(out);
    let line = s
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON line in worker output: {s}"))?;
    Ok(serde_json::from_str(line)?)
}

pub(crate) fn run_captured(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out.stdout)
}

/// A Python command with BLAS/OpenMP threads pinned and the OpenBLAS core overrides removed (they
/// slow a current numpy; they stay set for tests and CI, see the environment README).
pub(crate) fn python(py: &Path, script: &Path, threads: usize) -> Command {
    let mut c = Command::new(py);
    c.arg(script)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string());
    c
}

/// Runs `cmd` under `/usr/bin/time`, returning (wall seconds, max RSS in KiB).
pub(crate) fn time_process(mut cmd: Command, what: &str, tmp: &Path) -> Result<(f64, u64)> {
    let rss_file = tmp.join("rss.txt");
    let have_time = Path::new("/usr/bin/time").exists();
    let mut full = if have_time {
        let mut t = Command::new("/usr/bin/time");
        t.arg("-f").arg("%M").arg("-o").arg(&rss_file);
        t.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => t.env(k, v),
                None => t.env_remove(k),
            };
        }
        t
    } else {
        std::mem::replace(&mut cmd, Command::new("true"))
    };
    full.stdout(Stdio::null());
    let t0 = Instant::now();
    let status = full.status().with_context(|| format!("starting {what}"))?;
    let wall = t0.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    let rss = if have_time {
        std::fs::read_to_string(&rss_file)
            .ok()
            .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0)
    } else {
        0
    };
    Ok((wall, rss))
}

/// A 24-bit BMP of seeded noise (no image encoder needed; both sides read BMP).
pub(crate) fn write_bmp(path: &Path, size: usize) -> Result<()> {
    let row = (size * 3).div_ceil(4) * 4;
    let data_len = row * size;
    let mut b = Vec::with_capacity(54 + data_len);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&((54 + data_len) as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(size as i32).to_le_bytes());
    b.extend_from_slice(&(size as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..size {
        for x in 0..row {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            b.push(if x < size * 3 { (s >> 24) as u8 } else { 0 });
        }
    }
    std::fs::write(path, b)?;
    Ok(())
}

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    /// Eval-mode anomaly maps and scores of a batch of this many images.
    Infer(usize),
    /// One training step (forward, loss, backward, Adam) on a batch of this many images.
    Train(usize),
    /// A whole `rd predict` process, from spawn to exit.
    Startup,
}

impl std::str::FromStr for RowKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let batch = |n: &str| -> Result<usize> {
            match n.parse() {
                Ok(b) if b > 0 => Ok(b),
                _ => bail!("bad batch size in row kind `{s}` (e.g. infer8, train16)"),
            }
        };
        if s == "startup" {
            Ok(RowKind::Startup)
        } else if let Some(n) = s.strip_prefix("infer") {
            Ok(RowKind::Infer(batch(n)?))
        } else if let Some(n) = s.strip_prefix("train") {
            Ok(RowKind::Train(batch(n)?))
        } else {
            bail!("unknown row kind `{s}`: use inferN, trainN (N images a batch) or startup")
        }
    }
}

impl std::fmt::Display for RowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowKind::Infer(b) => write!(f, "infer{b}"),
            RowKind::Train(b) => write!(f, "train{b}"),
            RowKind::Startup => f.write_str("startup"),
        }
    }
}

impl RowKind {
    /// The images a timed iteration handles (none for the start-up row, a whole process).
    fn batch(self) -> Option<usize> {
        match self {
            RowKind::Infer(b) | RowKind::Train(b) => Some(b),
            RowKind::Startup => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    backbone: String,
    kind: RowKind,
    ours: Side,
    torch: Option<Side>,
}

impl Row {
    fn label(&self, size: usize) -> String {
        let what = match self.kind {
            RowKind::Infer(b) => format!("inference, batch {b}"),
            RowKind::Train(b) => format!("training step, batch {b}"),
            RowKind::Startup => "start to first score (`rd predict`)".to_string(),
        };
        format!("{} {size}² {what}", self.backbone)
    }
}

/// The rows to run: `--rows`, else the defaults for the device.
fn row_kinds(args: &BenchArgs) -> Result<Vec<RowKind>> {
    let default = if args.device == DeviceSpec::Cpu {
        "infer1,infer8,train8,startup"
    } else {
        "infer1,infer32,train16"
    };
    match &args.rows {
        Some(rows) => rows.iter().map(|r| r.parse()).collect(),
        None => default.split(',').map(|r| r.parse()).collect(),
    }
}

/// PyTorch's name for the device.
fn torch_device(device: DeviceSpec) -> String {
    match device {
        DeviceSpec::Metal => "mps".to_string(),
        d => d.to_string(),
    }
}

fn orchestrate(args: &BenchArgs, root: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    let rd = match &args.rd {
        Some(rd) => rd.clone(),
        None => exe.with_file_name("rd"),
    };
    let tmp = std::env::temp_dir().join(format!("rd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let script = tmp.join("bench_torch.py");
    std::fs::write(&script, TORCH_SCRIPT)?;
    if args.fit {
        let done = crate::bench_fit::fit_table(args, root, &rd, &script, &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        return done;
    }
    let kinds = row_kinds(args)?;
    let threads = args.threads;
    let py = args.torch_python.as_deref();
    let device = args.device.to_string();
    let gpu = match args.device {
        DeviceSpec::Cuda(n) => Some(n),
        _ => None,
    };

    let mut rows: Vec<Row> = Vec::new();
    for backbone in &args.backbones {
        backbone
            .parse::<Backbone>()
            .with_context(|| format!("unknown backbone {backbone}"))?;
        for &kind in &kinds {
            let mut row = Row {
                backbone: backbone.clone(),
                kind,
                ours: Side::default(),
                torch: py.map(|_| Side::default()),
            };
            eprintln!("== {}", row.label(args.size));
            let (mode, batch) = match kind {
                RowKind::Startup => {
                    startup_row(&mut row, args, &rd, py, &script, &tmp)?;
                    rows.push(row);
                    continue;
                }
                RowKind::Infer(b) => ("infer", b),
                RowKind::Train(b) => ("train", b),
            };
            for round in 0..args.rounds {
                let mut ours = Command::new(&exe);
                ours.current_dir(root)
                    .env("RAYON_NUM_THREADS", threads.to_string())
                    .args(["bench", "--worker", &format!("{mode}:{backbone}:{batch}")])
                    .args(["--size", &args.size.to_string()])
                    .args(["--warmup", &args.warmup.to_string()])
                    .args(["--runs", &args.runs.to_string()])
                    .args(["--device", &device]);
                if args.reference {
                    ours.arg("--reference");
                }
                if args.graph {
                    ours.arg("--graph");
                }
                let (out, mem) = watch_gpu(gpu, || run_captured(ours, "our worker"))?;
                let v = last_json_line(&out)?;
                row.ours.add(&v, mem)?;
                eprintln!("  round {round}: ours  {:?}{}", v["times_s"], mem_note(mem));
                if let (Some(py), Some(side)) = (py, row.torch.as_mut()) {
                    let mut c = python(py, &script, threads);
                    c.args([mode, backbone])
                        .arg(args.size.to_string())
                        .arg(batch.to_string())
                        .arg(args.warmup.to_string())
                        .arg(args.runs.to_string())
                        .arg(threads.to_string())
                        .arg(torch_device(args.device));
                    let (out, mem) = watch_gpu(gpu, || run_captured(c, "the anomalib worker"))?;
                    let v = last_json_line(&out)?;
                    side.add(&v, mem)?;
                    eprintln!("  round {round}: torch {:?}{}", v["times_s"], mem_note(mem));
                }
            }
            rows.push(row);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);

    let mut table = render_table(&rows, args);
    let peak = if args.device == DeviceSpec::Cpu {
        Some(gemm_peak(threads)?)
    } else {
        None
    };
    if let Some(peak) = peak {
        table.push_str(&gemm_share_table(&rows, args, peak));
    }
    println!("{table}");
    let json = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "device": device,
        "threads": threads,
        "size": args.size,
        "warmup": args.warmup,
        "runs": args.runs,
        "rounds": args.rounds,
        "gemm_peak_gflops_per_s": peak,
        "rows": rows.iter().map(|r| json!({
            "backbone": r.backbone,
            "row": r.kind.to_string(),
            "ours": r.ours.json(r.kind.batch()),
            "anomalib": r.torch.as_ref().map(|t| t.json(r.kind.batch())),
            "speedup": r.torch.as_ref().map(|t| median(&t.times) / median(&r.ours.times)),
            "rss_ratio": r.torch.as_ref().map(|t| r.ours.rss_kb as f64 / t.rss_kb.max(1) as f64),
        })).collect::<Vec<_>>(),
    });
    let path = if args.json.is_absolute() {
        args.json.clone()
    } else {
        root.join(&args.json)
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Runs `f` while sampling GPU `index`'s memory (when there is one to watch).
fn watch_gpu<T>(index: Option<usize>, f: impl FnOnce() -> Result<T>) -> Result<(T, Option<f64>)> {
    let watch = index.and_then(crate::gpu_memory::GpuMemory::start);
    let out = f()?;
    Ok((out, watch.and_then(|w| w.finish())))
}

fn mem_note(mib: Option<f64>) -> String {
    mib.map(|m| format!(", GPU peak {m:.0} MiB"))
        .unwrap_or_default()
}

fn startup_row(
    row: &mut Row,
    args: &BenchArgs,
    rd: &Path,
    py: Option<&Path>,
    script: &Path,
    tmp: &Path,
) -> Result<()> {
    if !rd.exists() && args.rd.is_none() {
        // `cargo xtask train` runs rd in its own process and builds no rd binary.
        eprintln!(
            "building the release rd for the start-up row (cargo build --release -p rd-cli)…"
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(crate::workspace_root())
            .args(["build", "--release", "-p", "rd-cli"])
            .status()
            .context("running cargo build --release -p rd-cli")?;
        if !status.success() {
            bail!("cargo build --release -p rd-cli failed");
        }
    }
    if !rd.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p rd-cli`",
            rd.display()
        );
    }
    let backbone: Backbone = row.backbone.parse()?;
    let image = tmp.join("image.bmp");
    write_bmp(&image, args.size)?;
    let model_path = tmp.join(format!("{}.safetensors", row.backbone));
    let model = seeded_model(backbone, args.size, &Device::Cpu)?;
    let meta = ModelMeta::new(model.config(), "seeded");
    model.save(&model_path, &meta, &[])?;
    drop(model);
    let torch_weights = tmp.join(format!("{}-torch.safetensors", row.backbone));
    if let Some(py) = py {
        let mut c = python(py, script, args.threads);
        c.args(["export", &row.backbone])
            .arg(args.size.to_string())
            .arg(&torch_weights);
        run_captured(c, "the anomalib export")?;
    }
    // Warm the page cache for both sides once, then interleave.
    for round in 0..=args.runs.max(1) {
        let out = tmp.join("pred");
        let mut ours = Command::new(rd);
        ours.env("RAYON_NUM_THREADS", args.threads.to_string())
            .args(["predict", "--model"])
            .arg(&model_path)
            .arg(&image)
            .arg("--out")
            .arg(&out)
            .args(["--device", &args.device.to_string()]);
        let (wall, rss) = time_process(ours, "rd predict", tmp)?;
        if round > 0 {
            row.ours.times.push(wall);
            row.ours.rss_kb = row.ours.rss_kb.max(rss);
        }
        if let (Some(py), Some(side)) = (py, row.torch.as_mut()) {
            let mut c = python(py, script, args.threads);
            c.args(["startup", &row.backbone])
                .arg(args.size.to_string())
                .arg(&torch_weights)
                .arg(&image)
                .arg(args.threads.to_string())
                .arg(torch_device(args.device));
            let (twall, trss) = time_process(c, "the anomalib start-up", tmp)?;
            if round > 0 {
                side.times.push(twall);
                side.rss_kb = side.rss_kb.max(trss);
            }
            eprintln!("  ours {wall:.3}s {rss} KiB | anomalib {twall:.3}s {trss} KiB");
        } else {
            eprintln!("  ours {wall:.3}s {rss} KiB");
        }
    }
    Ok(())
}

pub(crate) fn seeded_model(
    backbone: Backbone,
    size: usize,
    dev: &Device,
) -> Result<ReverseDistillation> {
    let config = ModelConfig {
        backbone,
        variant: Variant::Anomalib,
        image_size: (size, size),
        map_mode: MapMode::Add,
    };
    let teacher = Teacher::seeded(backbone, 0, dev)?;
    let student = Student::seeded(backbone, config.variant, 1, dev)?;
    Ok(ReverseDistillation::new(config, teacher, student)?)
}

/// A seeded input batch in roughly the ImageNet-normalised range.
fn input(batch: usize, size: usize, dev: &Device) -> Result<Tensor> {
    let n = batch * 3 * size * size;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Ok(Tensor::from_vec(v, (batch, 3, size, size), dev)?)
}

/// CPU seconds (user + system, all threads) this process has used so far: on a machine shared
/// with other work, a steadier measure of a kernel's cost than wall time.
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised name), in clock ticks (100/s).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            Some((ticks(11)? + ticks(12)?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// The kernels' GEMM work so far in this process, in floating-point operations.
fn gemm_flops() -> u64 {
    rd_kernels::gemm::flops()
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// One measurement in this process; prints one JSON line.
fn worker(spec: &str, args: &BenchArgs) -> Result<()> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [mode, backbone, batch] = parts[..] else {
        bail!("bad worker spec {spec}");
    };
    let backbone: Backbone = backbone.parse()?;
    let batch: usize = batch.parse()?;
    let dev = args.device.open()?;
    let model = seeded_model(backbone, args.size, &dev)?;
    let x = input(batch, args.size, &dev)?;
    let mut times = Vec::new();
    let mut cpu = 0.0;
    let mut flops = 0u64;
    match mode {
        "infer" => {
            for i in 0..args.warmup + args.runs {
                let (t0, c0, f0) = (Instant::now(), cpu_seconds(), gemm_flops());
                let maps = model.anomaly_maps(&x)?;
                let _: Vec<f32> = maps.scores.to_vec1()?;
                if i >= args.warmup {
                    times.push(t0.elapsed().as_secs_f64());
                    cpu += cpu_seconds() - c0;
                    flops += gemm_flops() - f0;
                }
            }
        }
        "train" => {
            let mut trainer = Trainer::new(model, AdamConfig::anomalib());
            for i in 0..args.warmup + args.runs {
                let (t0, c0, f0) = (Instant::now(), cpu_seconds(), gemm_flops());
                // What `rd train` runs: the engine's fused step, or the autograd path.
                let loss = match args.backprop() {
                    Backprop::Engine => trainer.step(&x)?,
                    Backprop::Graph => {
                        let state = trainer.compute_with_graph(&x)?;
                        trainer.apply(&state)?;
                        state.loss
                    }
                };
                let _ = loss.value()?;
                if i >= args.warmup {
                    times.push(t0.elapsed().as_secs_f64());
                    cpu += cpu_seconds() - c0;
                    flops += gemm_flops() - f0;
                }
            }
        }
        m => bail!("bad worker mode {m}"),
    }
    println!(
        "{}",
        json!({
            "times_s": times,
            "cpu_s": cpu,
            "peak_rss_kb": peak_rss_kb(),
            // GEMMs on the GPU are Candle's, uncounted.
            "gflop": (flops > 0).then(|| flops as f64 / 1e9 / args.runs.max(1) as f64),
        })
    );
    Ok(())
}

fn fmt_time(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Our rows' GEMM work and rate against the machine's measured GEMM peak.
fn gemm_share_table(rows: &[Row], args: &BenchArgs, peak: f64) -> String {
    let mut t = format!(
        "\nOur GEMM rate per row, against the GEMM peak measured just now ({peak:.0} GFLOP/s, \
         `cargo xtask bench --gemm`):\n\n\
         | row | GEMM GFLOP per iteration | GEMM GFLOP/s | share of peak |\n|---|---:|---:|---:|\n"
    );
    for r in rows {
        if let (Some(g), Some(rate)) = (r.ours.gflop, r.ours.gflops()) {
            t.push_str(&format!(
                "| {} | {g:.2} | {rate:.0} | {:.0} % |\n",
                r.label(args.size),
                100.0 * rate / peak
            ));
        }
    }
    t
}

fn render_table(rows: &[Row], args: &BenchArgs) -> String {
    let torch = args.torch_python.is_some();
    let gpu = args.device != DeviceSpec::Cpu;
    let mib = |m: Option<f64>| m.map_or("–".to_string(), |m| format!("{m:.0} MiB"));
    let rss = |kb: u64| format!("{:.0} MiB", kb as f64 / 1024.0);
    // On a GPU the memory that matters is the card's (nvidia-smi's peak, the same measure for
    // both sides, CUDA context included), with PyTorch's own allocator peak beside it.
    let memory = |s: &Side| if gpu { mib(s.gpu_mib) } else { rss(s.rss_kb) };
    let mem_name = if gpu { "GPU memory" } else { "peak RSS" };
    let per_s =
        |b: Option<usize>, t: f64| b.map_or("–".to_string(), |b| format!("{:.1}", b as f64 / t));
    let mut t = String::new();
    if torch {
        t.push_str(&format!(
            "| row | ours (median) | anomalib (median) | speed-up | ours img/s | anomalib img/s \
             | ours {mem_name} | anomalib {mem_name} |{}\n|---|---:|---:|---:|---:|---:|---:|---:|{}\n",
            if gpu { " anomalib max allocated |" } else { " RSS ratio |" },
            "---:|"
        ));
    } else {
        t.push_str(&format!(
            "| row | ours (median) | ours img/s | ours {mem_name} |\n|---|---:|---:|---:|\n"
        ));
    }
    for r in rows {
        let ours = median(&r.ours.times);
        let b = r.kind.batch();
        match &r.torch {
            Some(side) => {
                let th = median(&side.times);
                let last = if gpu {
                    mib(side.allocated_mib)
                } else {
                    format!("{:.2}", r.ours.rss_kb as f64 / side.rss_kb.max(1) as f64)
                };
                t.push_str(&format!(
                    "| {} | {} | {} | {:.2}× | {} | {} | {} | {} | {} |\n",
                    r.label(args.size),
                    fmt_time(ours),
                    fmt_time(th),
                    th / ours,
                    per_s(b, ours),
                    per_s(b, th),
                    memory(&r.ours),
                    memory(side),
                    last
                ));
            }
            None => t.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.label(args.size),
                fmt_time(ours),
                per_s(b, ours),
                memory(&r.ours)
            )),
        }
    }
    t
}
