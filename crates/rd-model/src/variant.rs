//! The two flavours of the student: anomalib's and the official RD4AD code's (SPEC §2.2, §2.6).

use std::fmt;
use std::str::FromStr;

use rd_backbone::{Backbone, BlockKind};

/// Which implementation's OCBE bottleneck to build; the decoders are identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// anomalib: OCBE with 2 BasicBlocks for resnet18/34 and Bottleneck width 512 for every
    /// bottleneck backbone.
    #[default]
    Anomalib,
    /// hq-deng/RD4AD: resnet34 OCBE with 3 blocks, wide ResNets' OCBE with width 1024.
    Official,
}

impl Variant {
    /// Blocks in the OCBE's one-class embedding layer (`bn_layer`).
    pub fn ocbe_blocks(self, backbone: Backbone) -> usize {
        match (backbone.block(), self, backbone) {
            (BlockKind::Basic, Variant::Official, Backbone::Resnet34) => 3,
            (BlockKind::Basic, _, _) => 2,
            (BlockKind::Bottleneck, _, _) => 3,
        }
    }

    /// `width_per_group` of the OCBE's Bottleneck blocks.
    pub fn ocbe_base_width(self, backbone: Backbone) -> usize {
        match self {
            Variant::Anomalib => 64,
            Variant::Official => backbone.base_width(),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::Anomalib => "anomalib",
            Variant::Official => "official",
        })
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "anomalib" => Ok(Variant::Anomalib),
            "official" | "rd4ad" => Ok(Variant::Official),
            _ => Err(format!(
                "unknown variant `{s}`: expected `anomalib` or `official`"
            )),
        }
    }
}
