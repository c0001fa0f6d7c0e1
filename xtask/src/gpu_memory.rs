//! Peak GPU memory of a benchmark worker, read from `nvidia-smi` while it runs, so that our side
//! and PyTorch's are measured the same way (CUDA context, caches and pools included).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running `nvidia-smi` sampling one GPU's used memory every 20 ms.
pub struct GpuMemory {
    child: Child,
    reader: JoinHandle<()>,
    peak_mib: Arc<AtomicU64>,
    baseline_mib: u64,
}

/// One reading of GPU `index`'s used memory in MiB.
fn used_mib(index: usize) -> Option<u64> {
    let out = Command::new("nvidia-smi")
        .args(query(index))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn query(index: usize) -> [String; 4] {
    [
        "--query-gpu=memory.used".into(),
        "--format=csv,noheader,nounits".into(),
        "-i".into(),
        index.to_string(),
    ]
}

fn parse(line: &str) -> Option<u64> {
    line.trim().parse().ok()
}

impl GpuMemory {
    /// Starts sampling GPU `index`, or `None` when `nvidia-smi` cannot read it.
    pub fn start(index: usize) -> Option<Self> {
        let baseline_mib = used_mib(index)?;
        let mut child = Command::new("nvidia-smi")
            .args(query(index))
            .args(["-lms", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let peak_mib = Arc::new(AtomicU64::new(baseline_mib));
        let peak = Arc::clone(&peak_mib);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = parse(&line) {
                    peak.fetch_max(v, Ordering::Relaxed);
                }
            }
        });
        Some(GpuMemory {
            child,
            reader,
            peak_mib,
            baseline_mib,
        })
    }

    /// Stops sampling; returns the peak above what was in use when sampling started, in MiB.
    pub fn finish(mut self) -> Option<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let peak = self.peak_mib.load(Ordering::Relaxed);
        Some(peak.saturating_sub(self.baseline_mib) as f64)
    }
}
