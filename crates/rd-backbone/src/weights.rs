//! Finding pretrained teacher weights: an explicit file, the Hugging Face cache, or a download.
//!
//! timm publishes each ResNet as `timm/<model>.<tag>` with a `model.safetensors`. Resolution order:
//! 1. an explicit file path;
//! 2. the Hugging Face cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! 3. a download through hf-hub into that cache, unless `HF_HUB_OFFLINE=1`.

use std::path::{Path, PathBuf};

use crate::{BackboneError, BackboneId, Result};

/// The file timm publishes in every model repository.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Where to look for teacher weights.
#[derive(Debug, Clone)]
pub struct WeightsLocator {
    /// The Hugging Face hub cache folder (the one holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// Whether a cache miss may download.
    pub allow_download: bool,
    /// Whether to draw a download progress bar.
    pub progress: bool,
}

impl WeightsLocator {
    /// Settings from the environment (`HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`), as the
    /// Python `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        WeightsLocator {
            cache_dir: default_cache_dir(),
            allow_download: !offline,
            progress: true,
        }
    }

    /// Resolves the weights file for `id`, downloading it if allowed and needed.
    pub fn resolve(&self, id: &BackboneId) -> Result<PathBuf> {
        let repo = id.hub_repo();
        let cache = hf_hub::Cache::new(self.cache_dir.clone());
        if let Some(path) = cache.model(repo.clone()).get(WEIGHTS_FILE) {
            return Ok(path);
        }
        let download = if self.allow_download {
            match self.download(&repo) {
                Ok(path) => return Ok(path),
                Err(e) => format!("the download failed ({e})"),
            }
        } else {
            "did not try to download because HF_HUB_OFFLINE is set".to_string()
        };
        Err(BackboneError::WeightsNotFound {
            id: id.to_string(),
            repo,
            cache: self.cache_dir.clone(),
            download,
        })
    }

    fn download(&self, repo: &str) -> std::result::Result<PathBuf, hf_hub::api::sync::ApiError> {
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_cache_dir(self.cache_dir.clone())
            .with_progress(self.progress)
            .build()?;
        api.model(repo.to_string()).get(WEIGHTS_FILE)
    }
}

/// The hub cache folder the Python `huggingface_hub` would use.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = non_empty_env("HF_HOME") {
        return Path::new(&home).join("hub");
    }
    hf_hub::Cache::from_env().path().clone()
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Where the teacher's weights come from.
#[derive(Debug, Clone)]
pub enum TeacherWeights {
    /// A local safetensors file (timm/torchvision names, or an anomalib model).
    File(PathBuf),
    /// timm weights from the Hugging Face cache or hub.
    Hub(BackboneId),
}

impl TeacherWeights {
    /// The local file to load, resolving hub weights with `locator`.
    pub fn resolve(&self, locator: &WeightsLocator) -> Result<PathBuf> {
        match self {
            TeacherWeights::File(path) => Ok(path.clone()),
            TeacherWeights::Hub(id) => locator.resolve(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out `<cache>/models--timm--<name>/{refs/main, snapshots/<rev>/model.safetensors}`.
    fn fake_cache(dir: &Path, repo: &str, contents: &[u8]) -> PathBuf {
        let folder = dir.join(format!("models--{}", repo.replace('/', "--")));
        let rev = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs/main"), rev).unwrap();
        let snap = folder.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap).unwrap();
        let file = snap.join(WEIGHTS_FILE);
        std::fs::write(&file, contents).unwrap();
        file
    }

    #[test]
    fn finds_weights_in_a_cache_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let file = fake_cache(dir.path(), "timm/resnet18.a1_in1k", b"x");
        let locator = WeightsLocator {
            cache_dir: dir.path().to_path_buf(),
            allow_download: false,
            progress: false,
        };
        let got = locator.resolve(&"resnet18".parse().unwrap()).unwrap();
        assert_eq!(got, file);
        let got = TeacherWeights::Hub("timm/resnet18.a1_in1k".parse().unwrap())
            .resolve(&locator)
            .unwrap();
        assert_eq!(got, file);
    }

    #[test]
    fn offline_miss_names_repo_file_cache_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        fake_cache(dir.path(), "timm/wide_resnet50_2.racm_in1k", b"x");
        let locator = WeightsLocator {
            cache_dir: dir.path().to_path_buf(),
            allow_download: false,
            progress: false,
        };
        let err = locator
            .resolve(&"wide_resnet50_2.tv_in1k".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("timm/wide_resnet50_2.tv_in1k"), "{err}");
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
        assert!(err.contains("--teacher-weights"), "{err}");
    }

    #[test]
    fn explicit_file_wins() {
        let locator = WeightsLocator {
            cache_dir: PathBuf::from("/nonexistent"),
            allow_download: false,
            progress: false,
        };
        let p = TeacherWeights::File("/some/file.safetensors".into())
            .resolve(&locator)
            .unwrap();
        assert_eq!(p, PathBuf::from("/some/file.safetensors"));
    }
}
