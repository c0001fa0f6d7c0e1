//! The ResNet family the teacher can be: block type, depth and widths per backbone (SPEC §2.1).

use std::fmt;
use std::str::FromStr;

use crate::BackboneError;

/// The residual block a ResNet is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (resnet18/34); expansion 1.
    Basic,
    /// 1×1 → 3×3 → 1×1 convolutions (resnet50 and wider); expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes` of a block: 1 for Basic, 4 for Bottleneck.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// A teacher backbone architecture, named as torchvision and timm name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Backbone {
    /// ResNet-18.
    Resnet18,
    /// ResNet-34.
    Resnet34,
    /// ResNet-50.
    Resnet50,
    /// ResNet-101.
    Resnet101,
    /// Wide ResNet-50-2 (bottleneck width ×2), the paper's teacher.
    WideResnet50_2,
    /// Wide ResNet-101-2.
    WideResnet101_2,
}

impl Backbone {
    /// Every supported backbone.
    pub const ALL: [Backbone; 6] = [
        Backbone::Resnet18,
        Backbone::Resnet34,
        Backbone::Resnet50,
        Backbone::Resnet101,
        Backbone::WideResnet50_2,
        Backbone::WideResnet101_2,
    ];

    /// The torchvision/timm model name, e.g. `wide_resnet50_2`.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet34 => "resnet34",
            Backbone::Resnet50 => "resnet50",
            Backbone::Resnet101 => "resnet101",
            Backbone::WideResnet50_2 => "wide_resnet50_2",
            Backbone::WideResnet101_2 => "wide_resnet101_2",
        }
    }

    /// Block type of every stage.
    pub fn block(self) -> BlockKind {
        match self {
            Backbone::Resnet18 | Backbone::Resnet34 => BlockKind::Basic,
            _ => BlockKind::Bottleneck,
        }
    }

    /// Blocks in layer1..layer3 (layer4 is never used by Reverse Distillation).
    pub fn blocks(self) -> [usize; 3] {
        match self {
            Backbone::Resnet18 => [2, 2, 2],
            Backbone::Resnet34 | Backbone::Resnet50 | Backbone::WideResnet50_2 => [3, 4, 6],
            Backbone::Resnet101 | Backbone::WideResnet101_2 => [3, 4, 23],
        }
    }

    /// torchvision's `width_per_group`: 128 for the wide variants, else 64.
    pub fn base_width(self) -> usize {
        match self {
            Backbone::WideResnet50_2 | Backbone::WideResnet101_2 => 128,
            _ => 64,
        }
    }

    /// Channels of the layer1, layer2 and layer3 feature maps (64e, 128e, 256e).
    pub fn feature_channels(self) -> [usize; 3] {
        let e = self.block().expansion();
        [64 * e, 128 * e, 256 * e]
    }

    /// The timm pretrained tag anomalib gets by default (`timm.create_model(name, pretrained=True)`).
    pub fn default_tag(self) -> &'static str {
        match self {
            Backbone::Resnet18 | Backbone::Resnet34 | Backbone::Resnet50 => "a1_in1k",
            Backbone::Resnet101 => "a1h_in1k",
            Backbone::WideResnet50_2 => "racm_in1k",
            Backbone::WideResnet101_2 => "tv2_in1k",
        }
    }
}

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Backbone> for String {
    fn from(b: Backbone) -> String {
        b.name().to_string()
    }
}

impl TryFrom<String> for Backbone {
    type Error = BackboneError;
    fn try_from(s: String) -> Result<Self, BackboneError> {
        s.parse()
    }
}

impl FromStr for Backbone {
    type Err = BackboneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backbone::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| BackboneError::UnknownBackbone(s.to_string()))
    }
}

/// A backbone plus the timm weight tag to fetch for it, parsed from `resnet18` or `wide_resnet50_2.tv_in1k`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackboneId {
    /// The architecture.
    pub backbone: Backbone,
    /// The timm pretrained tag (`tv_in1k`, `racm_in1k`, …).
    pub tag: String,
}

impl BackboneId {
    /// The Hugging Face repository holding these weights, `timm/<model>.<tag>`.
    pub fn hub_repo(&self) -> String {
        format!("timm/{}.{}", self.backbone.name(), self.tag)
    }
}

impl From<Backbone> for BackboneId {
    fn from(backbone: Backbone) -> Self {
        BackboneId {
            backbone,
            tag: backbone.default_tag().to_string(),
        }
    }
}

impl fmt::Display for BackboneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.backbone.name(), self.tag)
    }
}

impl FromStr for BackboneId {
    type Err = BackboneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("timm/").unwrap_or(s);
        match s.split_once('.') {
            Some((name, tag)) if !tag.is_empty() => Ok(BackboneId {
                backbone: name.parse()?,
                tag: tag.to_string(),
            }),
            Some((name, _)) => Ok(name.parse::<Backbone>()?.into()),
            None => Ok(s.parse::<Backbone>()?.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_tags() {
        let id: BackboneId = "wide_resnet50_2".parse().unwrap();
        assert_eq!(id.hub_repo(), "timm/wide_resnet50_2.racm_in1k");
        let id: BackboneId = "wide_resnet50_2.tv_in1k".parse().unwrap();
        assert_eq!(id.hub_repo(), "timm/wide_resnet50_2.tv_in1k");
        let id: BackboneId = "timm/resnet18.a1_in1k".parse().unwrap();
        assert_eq!(id.backbone, Backbone::Resnet18);
        let err = "resnet19".parse::<BackboneId>().unwrap_err().to_string();
        assert!(
            err.contains("resnet19") && err.contains("wide_resnet50_2"),
            "{err}"
        );
    }

    #[test]
    fn feature_channels_follow_expansion() {
        assert_eq!(Backbone::Resnet18.feature_channels(), [64, 128, 256]);
        assert_eq!(
            Backbone::WideResnet50_2.feature_channels(),
            [256, 512, 1024]
        );
    }
}
