//! `cargo xtask cuda-toolkit`: the CUDA 13.0 toolkit from PyPI wheels, so that
//! `--features cuda` builds on a machine with neither a system toolkit nor a GPU.
//!
//! The wheels unpack under `site-packages/nvidia/cu13/` with everything candle's build needs
//! (`nvcc`, headers, versioned libraries) except two things a system toolkit has: the unversioned
//! `libfoo.so` names the linker looks for, and `lib/stubs/libcuda.so`, the driver's link stub.
//! This command adds both, then prints the environment for `cargo build` (or runs the build).

mod stub;

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

pub use stub::{entry_points, header_entry_points, source as stub_source, SONAME};

/// What `pip` installs. 13.0 exactly: the GPU machines' driver is CUDA 13.0 (580.x), which may
/// not load PTX from a newer nvcc, and pip would otherwise pull the newest `nvidia-nvvm`.
/// `cccl` brings `<nv/target>`, which `cuda_fp16.h` includes (candle's kernels fail without it).
pub const REQUIREMENTS: [&str; 2] = [
    "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.0.*",
    "nvidia-nvvm==13.0.*",
];

/// The libraries candle and cudarc link (`-lcudart`, `-lcublas`, …), checked after the install.
const LINKED: [&str; 5] = ["cudart", "cublas", "cublasLt", "curand", "nvrtc"];

/// Arguments of `cargo xtask cuda-toolkit`.
#[derive(Debug, Args)]
#[command(after_help = "\
Installs the CUDA 13.0 toolkit from PyPI into target/cuda-toolkit (about 1.2 GB; the first run
downloads it, later runs only check it), adds the unversioned library links and the libcuda.so
link stub a system toolkit has, and prints the environment for building:

  eval \"$(cargo xtask cuda-toolkit)\"
  cargo build --release -p rd-cli --features cuda

or does both (into target/cuda, so the CPU build in target/release stays):

  cargo xtask cuda-toolkit --build

Compiling candle's CUDA kernels takes about 11 minutes on 2 cores. The binary needs the NVIDIA
driver and the CUDA 13 libraries to start; on this machine the printed LD_LIBRARY_PATH line lets
it start with the stub, and it then reports that there is no GPU.")]
pub struct CudaToolkitArgs {
    /// Python whose pip installs the wheels.
    #[arg(long, default_value = "python3", value_name = "PATH")]
    pub python: PathBuf,

    /// Install folder [default: target/cuda-toolkit in the workspace].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// GPU compute capability the kernels are compiled for (90: Hopper, H100/H200; 80: A100).
    #[arg(long, default_value_t = 90)]
    pub compute_cap: u32,

    /// Reinstall the wheels even when they are already there.
    #[arg(long)]
    pub force: bool,

    /// Then run `cargo build --release -p rd-cli --features cuda` with that environment (into
    /// target/cuda unless CARGO_TARGET_DIR is set).
    #[arg(long)]
    pub build: bool,
}

/// Runs `cargo xtask cuda-toolkit`.
pub fn run(args: CudaToolkitArgs) -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("the CUDA wheels are for Linux; elsewhere install NVIDIA's CUDA toolkit and set CUDA_ROOT");
    }
    let root = crate::workspace_root();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| root.join("target/cuda-toolkit"));
    let dir = std::path::absolute(&dir).with_context(|| format!("bad folder {}", dir.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    require_tool(
        &cc,
        "--version",
        "it builds the libcuda link stub: install a C compiler (apt-get install gcc) or set CC",
    )?;

    let toolkit = install(&args, &dir)?;
    step(3, "unversioned library links");
    let made = link_unversioned(&toolkit.join("lib"))?;
    eprintln!("      {made} new");
    step(4, "libcuda.so link stub");
    build_stub(&cc, &toolkit)?;

    let env = BuildEnv {
        cuda_root: toolkit,
        compute_cap: args.compute_cap,
    };
    println!("{}", env.exports());
    if args.build {
        build(&env, &root)?;
    } else {
        eprintln!(
            "done: run the lines above (or `eval \"$(cargo xtask cuda-toolkit)\"`), then \
             `cargo build --release -p rd-cli --features cuda`"
        );
    }
    Ok(())
}

fn step(n: usize, what: &str) {
    eprintln!("[{n}/4] {what}");
}

/// Fails with `hint` unless `program arg` runs and succeeds.
fn require_tool(program: &str, arg: &str, hint: &str) -> Result<()> {
    match Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("`{program} {arg}` failed ({s}): {hint}"),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("`{program}` is not on PATH: {hint}"),
        Err(e) => bail!("cannot run `{program}` ({e}): {hint}"),
    }
}

/// Installs the wheels into `dir/site` unless they are there already; returns the toolkit root.
fn install(args: &CudaToolkitArgs, dir: &Path) -> Result<PathBuf> {
    let site = dir.join("site");
    let toolkit = site.join("nvidia/cu13");
    let marker = dir.join("installed.txt");
    let wanted = REQUIREMENTS.join("\n") + "\n";
    let have = fs::read_to_string(&marker).is_ok_and(|m| m == wanted);
    step(1, "CUDA 13.0 wheels from PyPI");
    if have && !args.force && missing_files(&toolkit).is_empty() {
        eprintln!("      already in {}", site.display());
    } else {
        let py = args.python.display().to_string();
        require_tool(
            &py,
            "--version",
            "pip needs a Python 3: install one or pass --python PATH",
        )?;
        let pip_hint = format!(
            "`{py} -m pip` is missing: install pip (apt-get install python3-pip) or pass --python"
        );
        let status = Command::new(&args.python)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run `{py}`"))?;
        if !status.success() {
            bail!("{pip_hint}");
        }
        // Into a fresh folder, renamed when complete: an interrupted install is never taken for
        // a finished one.
        let partial = dir.join("site.partial");
        remove_dir_if_exists(&partial)?;
        let _ = fs::remove_file(&marker);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        eprintln!(
            "      pip install --target {} {} (about 1.2 GB unpacked; minutes on a first download)",
            partial.display(),
            REQUIREMENTS.map(|r| format!("'{r}'")).join(" ")
        );
        let t0 = Instant::now();
        let status = Command::new(&args.python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-warn-script-location", "--target"])
            .arg(&partial)
            .args(REQUIREMENTS)
            // pip's output goes to stderr: stdout carries only the export lines.
            .stdout(stderr_stdio()?)
            .status()
            .with_context(|| format!("cannot run `{py} -m pip`"))?;
        if !status.success() {
            bail!(
                "pip install failed ({status}): see its output above (it needs access to PyPI \
                 or a wheel cache holding the packages {})",
                REQUIREMENTS.join(", ")
            );
        }
        remove_dir_if_exists(&site)?;
        fs::rename(&partial, &site)
            .with_context(|| format!("cannot move {} to {}", partial.display(), site.display()))?;
        let missing = missing_files(&toolkit);
        if !missing.is_empty() {
            bail!(
                "the wheels installed, but {} lacks {}: did their layout change?",
                toolkit.display(),
                missing.join(", ")
            );
        }
        fs::write(&marker, wanted).with_context(|| format!("cannot write {}", marker.display()))?;
        eprintln!("      installed in {:.0} s", t0.elapsed().as_secs_f64());
    }
    step(2, "toolkit files");
    let missing = missing_files(&toolkit);
    if !missing.is_empty() {
        bail!(
            "{} lacks {}: rerun with --force",
            toolkit.display(),
            missing.join(", ")
        );
    }
    eprintln!("      {}", toolkit.display());
    Ok(toolkit)
}

/// The files of `toolkit` that the build needs and are not there.
fn missing_files(toolkit: &Path) -> Vec<String> {
    let files = [
        "bin/nvcc",
        "nvvm/bin/cicc",
        "include/cuda.h",
        "include/cuda_runtime.h",
        "include/nv/target",
    ];
    let mut missing: Vec<String> = files
        .iter()
        .filter(|f| !toolkit.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let lib = toolkit.join("lib");
    missing.extend(
        LINKED
            .iter()
            .filter(|name| versioned(&lib, name).is_none())
            .map(|name| format!("lib/lib{name}.so.*")),
    );
    missing
}

/// `lib/libNAME.so.<version>` if there is one.
fn versioned(lib: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("lib{name}.so.");
    fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn stderr_stdio() -> Result<Stdio> {
    let fd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stderr")?;
    Ok(Stdio::from(fd))
}

/// Adds `libfoo.so -> libfoo.so.13` beside each versioned library in `lib` that lacks one, the
/// name `-lfoo` looks for. Returns how many links it made.
pub fn link_unversioned(lib: &Path) -> Result<usize> {
    let mut made = 0;
    let entries = fs::read_dir(lib).with_context(|| format!("cannot read {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stem, _version)) = name.split_once(".so.") else {
            continue;
        };
        let link = lib.join(format!("{stem}.so"));
        match fs::symlink_metadata(&link) {
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", link.display())),
        }
        std::os::unix::fs::symlink(name, &link)
            .with_context(|| format!("cannot create the link {}", link.display()))?;
        made += 1;
    }
    Ok(made)
}

/// Writes `lib/stubs/libcuda.so` (and `libcuda.so.1`, for starting binaries on this machine)
/// from the toolkit's `cuda.h`, unless the same source was compiled already.
fn build_stub(cc: &str, toolkit: &Path) -> Result<()> {
    let include = toolkit.join("include");
    let names = stub::header_entry_points(cc, &include)?;
    let src = stub::source(&names, &include.join("cuda.h"));
    let stubs = toolkit.join("lib/stubs");
    fs::create_dir_all(&stubs).with_context(|| format!("cannot create {}", stubs.display()))?;
    let c_file = stubs.join("libcuda_stub.c");
    let so = stubs.join("libcuda.so");
    if so.is_file() && fs::read_to_string(&c_file).is_ok_and(|s| s == src) {
        eprintln!("      up to date ({} entry points)", names.len());
    } else {
        fs::write(&c_file, &src).with_context(|| format!("cannot write {}", c_file.display()))?;
        stub::compile(cc, &c_file, &so)?;
        eprintln!("      {} entry points → {}", names.len(), so.display());
    }
    let so1 = stubs.join(SONAME);
    if fs::symlink_metadata(&so1).is_err() {
        std::os::unix::fs::symlink("libcuda.so", &so1)
            .with_context(|| format!("cannot create the link {}", so1.display()))?;
    }
    Ok(())
}

/// The environment candle's and cudarc's build scripts read.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// The toolkit root (`…/nvidia/cu13`), holding `bin`, `include`, `lib` and `nvvm`.
    pub cuda_root: PathBuf,
    /// The GPU compute capability the kernels are compiled for.
    pub compute_cap: u32,
}

impl BuildEnv {
    /// `(name, value)` pairs for a child process, given the current `PATH` and `LIBRARY_PATH`.
    pub fn vars(&self, path: Option<&str>, library_path: Option<&str>) -> Vec<(String, String)> {
        let root = self.cuda_root.display().to_string();
        let prepend = |dirs: String, rest: Option<&str>| match rest {
            Some(r) if !r.is_empty() => format!("{dirs}:{r}"),
            _ => dirs,
        };
        vec![
            ("CUDA_ROOT".into(), root.clone()),
            ("CUDA_PATH".into(), root.clone()),
            ("PATH".into(), prepend(format!("{root}/bin"), path)),
            // cudarc already searches $CUDA_ROOT/lib and lib/stubs; this covers other links.
            (
                "LIBRARY_PATH".into(),
                prepend(format!("{root}/lib/stubs:{root}/lib"), library_path),
            ),
            ("CUDA_COMPUTE_CAP".into(), self.compute_cap.to_string()),
        ]
    }

    /// Shell lines setting [`Self::vars`], and a commented one for starting the binary here.
    pub fn exports(&self) -> String {
        let root = shell_quote(&self.cuda_root.display().to_string());
        format!(
            "export CUDA_ROOT={root}\n\
             export CUDA_PATH=\"$CUDA_ROOT\"\n\
             export PATH=\"$CUDA_ROOT/bin:$PATH\"\n\
             export LIBRARY_PATH=\"$CUDA_ROOT/lib/stubs:$CUDA_ROOT/lib${{LIBRARY_PATH:+:$LIBRARY_PATH}}\"\n\
             export CUDA_COMPUTE_CAP={}\n\
             # to start the CUDA rd on this machine (no driver: the stub reports no GPU):\n\
             # export LD_LIBRARY_PATH=\"$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs\"",
            self.compute_cap
        )
    }

    /// `LD_LIBRARY_PATH` for starting a CUDA binary on this machine, with the stub as driver.
    pub fn run_here_library_path(&self) -> String {
        let root = self.cuda_root.display();
        format!("{root}/lib:{root}/lib/stubs")
    }
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `cargo build --release -p rd-cli --features cuda` with `env`, then a start-up check.
fn build(env: &BuildEnv, root: &Path) -> Result<()> {
    if std::env::var_os("NVCC_CCBIN").is_none() {
        require_tool(
            "g++",
            "--version",
            "nvcc compiles with the host's g++: install it (apt-get install g++) or set NVCC_CCBIN",
        )?;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/cuda"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let path = std::env::var("PATH").ok();
    let library_path = std::env::var("LIBRARY_PATH").ok();
    eprintln!(
        "building rd with CUDA into {} (candle's kernels: about 11 minutes on 2 cores)…",
        target_dir.display()
    );
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "rd-cli", "--features", "cuda"])
        .envs(env.vars(path.as_deref(), library_path.as_deref()))
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdout(stderr_stdio()?)
        .status()
        .with_context(|| format!("cannot run `{cargo} build`"))?;
    if !status.success() {
        bail!("`cargo build --release -p rd-cli --features cuda` failed ({status}): see above");
    }
    let rd = target_dir.join("release/rd");
    let out = Command::new(&rd)
        .arg("--version")
        .env("LD_LIBRARY_PATH", env.run_here_library_path())
        .output()
        .with_context(|| format!("cannot start {}", rd.display()))?;
    if !out.status.success() {
        bail!(
            "{} was built but does not start: {}",
            rd.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "built {} ({}); it needs the NVIDIA driver and the CUDA 13 libraries \
         (LD_LIBRARY_PATH={}/lib) to start",
        rd.display(),
        String::from_utf8_lossy(&out.stdout).trim(),
        env.cuda_root.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_driver_functions_in_preprocessed_c() {
        let c = "typedef struct CUctx_st *CUcontext;\n\
                 typedef void (*CUhostFn)(void *userData);\n\
                 CUresult cuInit(unsigned int Flags);\n\
                 CUresult  cuMemAlloc_v2 (CUdeviceptr *dptr,\n size_t bytesize);\n\
                 int cudaMalloc(void **p); int cuda(int); CUresult cuCtxGetDevice;";
        let names: Vec<_> = entry_points(c).into_iter().collect();
        assert_eq!(names, ["cuInit", "cuMemAlloc_v2"]);
    }

    #[test]
    fn stub_compiles_with_the_driver_soname() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["cuInit", "cuGetErrorString", "cuDeviceGetCount"]
            .map(String::from)
            .into_iter()
            .collect();
        let src = stub_source(&names, Path::new("cuda.h"));
        // The error-text functions are written out once, not also as plain stubs.
        assert_eq!(src.matches("cuGetErrorString(").count(), 1);
        assert!(src.contains("int cuInit(void) { return STUB_ERROR; }"));
        let c = dir.path().join("stub.c");
        let so = dir.path().join("libcuda.so");
        fs::write(&c, src).unwrap();
        stub::compile("cc", &c, &so).unwrap();
        let bytes = fs::read(&so).unwrap();
        let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has(SONAME), "no SONAME in the stub");
        assert!(has("cuDeviceGetCount") && has("cuGetErrorName"));
    }

    #[test]
    fn links_each_versioned_library_once() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path();
        for f in [
            "libcudart.so.13",
            "libnvrtc-builtins.so.13.0",
            "libcublas.so",
            "notes.txt",
        ] {
            fs::write(lib.join(f), b"").unwrap();
        }
        fs::write(lib.join("libcublas.so.13"), b"").unwrap();
        assert_eq!(link_unversioned(lib).unwrap(), 2);
        assert_eq!(
            fs::read_link(lib.join("libcudart.so")).unwrap(),
            Path::new("libcudart.so.13")
        );
        assert_eq!(
            fs::read_link(lib.join("libnvrtc-builtins.so")).unwrap(),
            Path::new("libnvrtc-builtins.so.13.0")
        );
        // An existing file keeps its place, and a second run has nothing to do.
        assert!(fs::read_link(lib.join("libcublas.so")).is_err());
        assert_eq!(link_unversioned(lib).unwrap(), 0);
    }

    #[test]
    fn exports_quote_the_root_and_keep_existing_paths() {
        let env = BuildEnv {
            cuda_root: PathBuf::from("/opt/it's/cu13"),
            compute_cap: 90,
        };
        let ex = env.exports();
        assert!(ex.starts_with("export CUDA_ROOT='/opt/it'\\''s/cu13'\n"));
        assert!(ex.contains("export CUDA_COMPUTE_CAP=90\n"));
        let vars = env.vars(Some("/usr/bin"), None);
        let get = |k: &str| &vars.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("PATH"), "/opt/it's/cu13/bin:/usr/bin");
        assert_eq!(
            get("LIBRARY_PATH"),
            "/opt/it's/cu13/lib/stubs:/opt/it's/cu13/lib"
        );
        assert_eq!(get("CUDA_PATH"), "/opt/it's/cu13");
    }

    /// The toolkit-free guard for `--features cuda`/`metal`: candle's build scripts need nvcc
    /// even for `cargo check`, but whether every crate forwards the features is in the manifests.
    #[test]
    fn every_crate_forwards_the_gpu_features() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(crate::workspace_root())
            .args([
                "metadata",
                "--no-deps",
                "--offline",
                "--format-version",
                "1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let packages = meta["packages"].as_array().unwrap();
        let has_gpu: std::collections::BTreeSet<&str> = packages
            .iter()
            .filter(|p| p["features"].get("cuda").is_some())
            .filter_map(|p| p["name"].as_str())
            .chain(["candle-core", "candle-nn"])
            .collect();
        let mut missing = Vec::new();
        for p in packages {
            let name = p["name"].as_str().unwrap();
            for dep in p["dependencies"].as_array().unwrap() {
                let is_dev = dep["kind"].as_str() == Some("dev");
                let dep = dep["name"].as_str().unwrap();
                // Other crates' tests use rd-tests for its helpers only; its own GPU feature is
                // for its parity tests.
                if !has_gpu.contains(dep) || (is_dev && dep == "rd-tests") {
                    continue;
                }
                for feature in ["cuda", "metal"] {
                    // `dep?/feature` forwards to an optional dependency when it is enabled.
                    let wanted = format!("{dep}/{feature}");
                    let optional = format!("{dep}?/{feature}");
                    let forwards = p["features"][feature].as_array().is_some_and(|f| {
                        f.iter()
                            .any(|v| v.as_str() == Some(&wanted) || v.as_str() == Some(&optional))
                    });
                    if !forwards {
                        missing.push(format!("{name}: {feature} lacks {wanted}"));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
