//! Where model parameters come from: a safetensors file, or a seeded initialisation.
//!
//! Every module is built through a Candle [`VarBuilder`] backed by a [`ParamStore`]. The store
//! records each tensor a module asks for, so a caller can list, count, save or train exactly the
//! parameters the architecture has. Loading from a file is strict: a missing tensor or a wrong
//! shape is an error naming it, and [`ParamStore::check_unused`] reports tensors the model has no
//! place for. Initialisation draws from a seeded ChaCha generator because Candle's CPU RNG cannot
//! be seeded, and same seed must give the same weights.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{BackboneError, Result};

/// A memory-mapped safetensors file of weights (f32, f16 or bf16; converted to f32 on load).
pub struct WeightFile {
    path: PathBuf,
    tensors: MmapedSafetensors,
    names: HashSet<String>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl WeightFile {
    /// Memory-maps and validates the header of a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let fail = |reason: String| BackboneError::WeightsFile {
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(&path).map_err(|e| fail(e.to_string()))?;
        if meta.is_dir() {
            return Err(fail("it is a folder, not a .safetensors file".into()));
        }
        if meta.len() < 8 {
            return Err(fail(format!(
                "the file is {} bytes long, too short to be safetensors (empty or truncated?)",
                meta.len()
            )));
        }
        rd_kernels::read_ahead(&path);
        #[allow(unsafe_code)] // the one mmap of the crate
        // SAFETY: the file is mapped read-only; safetensors validates the header and every offset
        // against the mapped length before any tensor is read. Changing the file while it is
        // mapped is outside what we support (as with every mmap-based loader).
        let tensors = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| {
            fail(format!(
                "not a valid safetensors file ({}); is it truncated, or a PyTorch .pt/.ckpt?",
                root_message(&e)
            ))
        })?;
        let names = tensors.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(WeightFile {
            path,
            tensors,
            names,
        })
    }

    /// The string map in the file's `__metadata__` header (empty when absent).
    pub fn metadata(&self) -> Result<std::collections::HashMap<String, String>> {
        read_header_metadata(&self.path)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds a tensor of this exact name.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// All tensor names in the file, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The first prefix `p` of `candidates` for which `p + probe` is in the file.
    pub fn detect_prefix<'a>(&self, candidates: &[&'a str], probe: &str) -> Option<&'a str> {
        candidates
            .iter()
            .copied()
            .find(|p| self.contains(&format!("{p}{probe}")))
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).ok().map(|v| v.shape().to_vec())
    }

    /// Loads one tensor in its stored dtype on `device`.
    pub fn load_raw(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.tensors
            .load(name, device)
            .map_err(|e| BackboneError::WeightsFile {
                path: self.path.clone(),
                reason: format!("cannot read tensor `{name}`: {}", root_message(&e)),
            })
    }

    /// Loads one tensor as f32 on `device`.
    pub fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self.load_raw(name, device)?;
        match t.dtype() {
            DType::F32 => Ok(t),
            DType::F16 | DType::BF16 | DType::F64 => Ok(t.to_dtype(DType::F32)?),
            other => Err(BackboneError::WeightsFile {
                path: self.path.clone(),
                reason: format!("tensor `{name}` has dtype {other:?}; expected a float type"),
            }),
        }
    }
}

/// Reads `__metadata__` from a safetensors header (8-byte length, then JSON) without the data.
fn read_header_metadata(path: &Path) -> Result<std::collections::HashMap<String, String>> {
    use std::io::Read;
    let fail = |reason: String| BackboneError::WeightsFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| fail(format!("cannot read the header length: {e}")))?;
    let len = u64::from_le_bytes(len);
    // safetensors itself refuses headers over 100 MB.
    if len > 100_000_000 {
        return Err(fail(format!("header of {len} bytes is not plausible")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| fail(format!("cannot read the header: {e}")))?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: std::collections::HashMap<String, String>,
    }
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| fail(format!("header is not valid JSON: {e}")))?;
    Ok(header.metadata)
}

/// The innermost message of a Candle error, without backtraces or context wrappers.
fn root_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => root_message(inner),
        candle_core::Error::Context { inner, .. } => root_message(inner),
        other => other.to_string(),
    }
}

/// How the model's own tensor names map to names in a file: ordered `(model prefix, file prefix)`
/// rewrite rules; the first rule whose model prefix matches applies.
#[derive(Debug, Clone, Default)]
pub struct NameMap {
    rules: Vec<(String, String)>,
}

impl NameMap {
    /// Names are the same in the file and the model.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Every model name gets `file_prefix` in front of it.
    pub fn prefixed(file_prefix: &str) -> Self {
        Self::identity().rule("", file_prefix)
    }

    /// Adds a rule: model names starting with `model_prefix` use `file_prefix` instead.
    pub fn rule(mut self, model_prefix: &str, file_prefix: &str) -> Self {
        self.rules
            .push((model_prefix.to_string(), file_prefix.to_string()));
        self
    }

    /// The file's name for a model tensor name.
    pub fn to_file(&self, name: &str) -> String {
        for (m, f) in &self.rules {
            if let Some(rest) = name.strip_prefix(m.as_str()) {
                return format!("{f}{rest}");
            }
        }
        name.to_string()
    }
}

/// Where a store's tensors come from.
enum Source {
    File {
        file: Arc<WeightFile>,
        names: NameMap,
        hint: String,
    },
    Seeded(Box<ChaCha8Rng>),
}

/// One parameter or buffer held by the store.
#[derive(Clone)]
enum Entry {
    Trainable(Var),
    Frozen(Tensor),
}

impl Entry {
    fn tensor(&self) -> &Tensor {
        match self {
            Entry::Trainable(v) => v.as_tensor(),
            Entry::Frozen(t) => t,
        }
    }
}

struct Inner {
    source: Source,
    trainable: bool,
    entries: BTreeMap<String, Entry>,
    error: Option<BackboneError>,
}

/// The tensors of one model part, created on request by its modules (see the module docs).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        let source = match &inner.source {
            Source::File { file, .. } => file.path().display().to_string(),
            Source::Seeded(_) => "seeded".to_string(),
        };
        f.debug_struct("ParamStore")
            .field("source", &source)
            .field("tensors", &inner.entries.len())
            .field("trainable", &inner.trainable)
            .finish()
    }
}

impl ParamStore {
    /// A store that initialises every tensor from `seed` with the scheme each module asks for.
    pub fn seeded(seed: u64, trainable: bool, device: &Device) -> Self {
        Self::new(
            Source::Seeded(Box::new(ChaCha8Rng::seed_from_u64(seed))),
            trainable,
            device,
        )
    }

    /// A store that takes every tensor from `file` (through `names`); a missing one is an error
    /// carrying `hint`.
    pub fn from_file(
        file: Arc<WeightFile>,
        names: NameMap,
        hint: &str,
        trainable: bool,
        device: &Device,
    ) -> Self {
        Self::new(
            Source::File {
                file,
                names,
                hint: hint.to_string(),
            },
            trainable,
            device,
        )
    }

    fn new(source: Source, trainable: bool, device: &Device) -> Self {
        ParamStore {
            inner: Arc::new(Mutex::new(Inner {
                source,
                trainable,
                entries: BTreeMap::new(),
                error: None,
            })),
            device: device.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated: entries are inserted
        // in one call. So a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A Candle `VarBuilder` that draws from this store (f32).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, self.device.clone())
    }

    /// Turns a Candle error raised while building modules into the store's precise error, if any.
    pub fn explain(&self, e: candle_core::Error) -> BackboneError {
        self.lock().error.take().unwrap_or(BackboneError::Candle(e))
    }

    /// Every tensor the modules asked for, by model name, sorted.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .entries
            .iter()
            .map(|(n, e)| (n.clone(), e.tensor().clone()))
            .collect()
    }

    /// The trainable parameters (not BatchNorm running statistics), by model name, sorted.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .entries
            .iter()
            .filter(|(n, _)| is_parameter(n))
            .filter_map(|(n, e)| match e {
                Entry::Trainable(v) => Some((n.clone(), v.clone())),
                Entry::Frozen(_) => None,
            })
            .collect()
    }

    /// Number of parameter elements (weights and biases; BatchNorm running statistics excluded).
    pub fn parameter_count(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|(n, _)| is_parameter(n))
            .map(|(_, e)| e.tensor().elem_count())
            .sum()
    }

    /// Errors if the source file has tensors under `scope` (model names) that no module asked for,
    /// ignoring those for which `ignore` (given the file name) is true.
    pub fn check_unused(&self, scope: &str, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let inner = self.lock();
        let Source::File { file, names, hint } = &inner.source else {
            return Ok(());
        };
        let prefix = names.to_file(scope);
        let used: HashSet<String> = inner.entries.keys().map(|n| names.to_file(n)).collect();
        let unused: Vec<&str> = file
            .names()
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && !used.contains(*n) && !ignore(n))
            .collect();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(BackboneError::UnexpectedTensors {
                path: file.path().to_path_buf(),
                count: unused.len(),
                example: first.to_string(),
                hint: hint.clone(),
            }),
        }
    }

    fn fetch(&self, inner: &mut Inner, shape: &Shape, name: &str, init: Init) -> Result<Tensor> {
        match &mut inner.source {
            Source::File { file, names, hint } => {
                let file_name = names.to_file(name);
                if !file.contains(&file_name) {
                    return Err(BackboneError::MissingTensor {
                        path: file.path().to_path_buf(),
                        name: file_name,
                        canonical: name.to_string(),
                        hint: hint.clone(),
                    });
                }
                let t = file.load_f32(&file_name, &self.device)?;
                if t.dims() != shape.dims() {
                    return Err(BackboneError::ShapeMismatch {
                        path: file.path().to_path_buf(),
                        name: file_name,
                        found: t.dims().to_vec(),
                        expected: shape.dims().to_vec(),
                    });
                }
                Ok(t)
            }
            Source::Seeded(rng) => Ok(seeded_tensor(rng, shape, init, &self.device)?),
        }
    }
}

/// Whether a tensor name is a learnable parameter rather than a BatchNorm buffer.
pub fn is_parameter(name: &str) -> bool {
    !(name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked"))
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get(name) {
            return Ok(e.tensor().clone());
        }
        let t = match self.fetch(&mut inner, &shape, name, init) {
            Ok(t) => t.to_dtype(dtype)?,
            Err(e) => {
                let msg = e.to_string();
                inner.error.get_or_insert(e);
                return Err(candle_core::Error::Msg(msg));
            }
        };
        let entry = if inner.trainable {
            Entry::Trainable(Var::from_tensor(&t)?)
        } else {
            Entry::Frozen(t)
        };
        let out = entry.tensor().clone();
        inner.entries.insert(name.to_string(), entry);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!(
            "tensor `{name}` requested without a shape; this is a bug in rd-backbone"
        )
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let inner = self.lock();
        match &inner.source {
            Source::File { file, names, .. } => file.contains(&names.to_file(name)),
            Source::Seeded(_) => true,
        }
    }
}

/// Draws a tensor for `init` from the seeded generator, in row-major order.
fn seeded_tensor(
    rng: &mut ChaCha8Rng,
    shape: &Shape,
    init: Init,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let data: Vec<f32> = match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => (0..n).map(|_| normal(rng, mean, stdev)).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape) as f64;
            let gain = non_linearity.gain();
            let std = gain / fan.sqrt();
            match dist {
                NormalOrUniform::Normal => (0..n).map(|_| normal(rng, 0.0, std)).collect(),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect()
                }
            }
        }
    };
    Tensor::from_vec(data, shape.clone(), device)
}

fn normal(rng: &mut ChaCha8Rng, mean: f64, std: f64) -> f32 {
    let z: f64 = StandardNormal.sample(rng);
    (mean + std * z) as f32
}

/// He-normal initialisation with fan-out and ReLU gain: what anomalib and timm give every `nn.Conv2d`.
pub const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// PyTorch's default `nn.ConvTranspose2d` initialisation, kaiming-uniform with a = √5, for a weight
/// of shape (in, out, k, k): uniform in ±1/√(out·k·k).
pub fn conv_transpose_init(out_channels: usize, kernel: usize) -> Init {
    let bound = 1.0 / ((out_channels * kernel * kernel) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_store_is_deterministic() {
        let make = |seed| {
            let store = ParamStore::seeded(seed, true, &Device::Cpu);
            let vb = store.var_builder();
            vb.get_with_hints((4, 3, 3, 3), "w", CONV_INIT)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));
    }

    #[test]
    fn kaiming_fan_out_has_the_right_spread() {
        let store = ParamStore::seeded(3, false, &Device::Cpu);
        let w = store
            .var_builder()
            .get_with_hints((64, 32, 3, 3), "w", CONV_INIT)
            .unwrap();
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        let expected = 2.0 / (64.0 * 9.0);
        assert!((var / expected - 1.0).abs() < 0.05, "{var} vs {expected}");
    }

    #[test]
    fn name_map_rewrites_first_matching_rule() {
        let m = NameMap::identity()
            .rule("bottleneck.", "bn.")
            .rule("decoder.", "decoder.");
        assert_eq!(m.to_file("bottleneck.conv1.weight"), "bn.conv1.weight");
        assert_eq!(
            m.to_file("decoder.layer1.0.conv1.weight"),
            "decoder.layer1.0.conv1.weight"
        );
        assert_eq!(NameMap::prefixed("model.").to_file("a.b"), "model.a.b");
    }
}
