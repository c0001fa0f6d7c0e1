//! Writes the default synthetic dataset: `cargo run -p rd-dataset --example synth_demo -- <dir>`.

fn main() -> Result<(), rd_dataset::DatasetError> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "synthetic".into());
    let start = std::time::Instant::now();
    let summary = rd_dataset::synthetic::generate(dir.as_ref(), &Default::default())?;
    println!(
        "{}: categories {:?}, {} files written, reused: {}, {:.2?}",
        summary.root.display(),
        summary.categories,
        summary.files_written,
        summary.reused,
        start.elapsed()
    );
    Ok(())
}
